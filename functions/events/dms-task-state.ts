/**
 * EventBridge `DMS Replication Task State Change` → the token of the step that waits for a DMS full
 * load (strategy `dms`). The event only says that something changed: the task's status now, read
 * with DescribeReplicationTasks, decides, so that a late or out-of-order event cannot.
 */
import {
  type DatabaseMigrationServiceClient,
  DescribeReplicationTasksCommand,
  DatabaseMigrationServiceClient as DmsClient,
  type ReplicationTask,
} from '@aws-sdk/client-database-migration-service';
import middy from '@middy/core';
import { InvalidInputError } from '@pgferry/core';
import { z } from 'zod';
import { awsTaskDeps } from '../lib/aws-deps';
import { completeWaitingStep, type StepOutcome, type WaitingStepDeps } from '../lib/waiting-step';

/** The step that waits for the DMS full load (the task table's name). */
export const DMS_STEP = 'bulkLoad';

const taskStateChange = z.object({
  source: z.literal('aws.dms'),
  'detail-type': z.literal('DMS Replication Task State Change'),
  resources: z.array(z.string().regex(/^arn:aws[a-z-]*:dms:[a-z0-9-]+:\d{12}:task:\S+$/)).min(1),
});

export interface DmsEventDeps extends WaitingStepDeps {
  dms: DatabaseMigrationServiceClient;
}

/** What the task's state means for the waiting step: done, failed, or not yet. */
export function fullLoadResult(task: ReplicationTask) {
  const stats = task.ReplicationTaskStats;
  const loaded = stats?.FullLoadFinishDate !== undefined || stats?.FullLoadProgressPercent === 100;
  if (task.Status === 'failed' || (task.Status === 'stopped' && !loaded))
    return {
      error: 'DmsTaskFailedError',
      cause: `DMS task ${task.ReplicationTaskIdentifier} is ${task.Status}: ${task.LastFailureMessage ?? task.StopReason ?? 'no reason given'}`,
    };
  if (loaded)
    return {
      output: {
        summary: `DMS full load of ${task.ReplicationTaskIdentifier} finished: ${stats?.TablesLoaded ?? 0} tables loaded, ${stats?.TablesErrored ?? 0} errored`,
        tablesLoaded: stats?.TablesLoaded ?? 0,
        tablesErrored: stats?.TablesErrored ?? 0,
      },
    };
  return undefined;
}

export function createHandler(deps: () => DmsEventDeps) {
  return middy<
    unknown,
    StepOutcome | { action: 'ignored'; reason: 'not-finished' | 'task-gone'; status?: string }
  >().handler(async (event) => {
    const parsed = taskStateChange.safeParse(event);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new InvalidInputError(`not a DMS task state change: ${issue.path.join('.')}: ${issue.message}`, {
        field: issue.path.join('.') || 'event',
        hint: 'the rule should match source aws.dms and detail-type "DMS Replication Task State Change" only',
      });
    }
    const d = deps();
    const arn = parsed.data.resources[0]!;
    const what = `DMS task state change of ${arn}`;
    const out = await d.dms.send(
      new DescribeReplicationTasksCommand({
        Filters: [{ Name: 'replication-task-arn', Values: [arn] }],
        WithoutSettings: true,
      }),
    );
    const task = out.ReplicationTasks?.[0];
    if (!task) {
      d.log(`ignored ${what}: the task no longer exists`);
      return { action: 'ignored', reason: 'task-gone' };
    }
    const result = fullLoadResult(task);
    if (!result) {
      d.log(`ignored ${what}: the task is ${task.Status}, its full load not finished`);
      return { action: 'ignored', reason: 'not-finished', status: task.Status };
    }
    return completeWaitingStep(d, what, `DMS#${arn}`, DMS_STEP, result);
  });
}

let deps: DmsEventDeps | undefined;
export const handler = createHandler(() => (deps ??= { ...awsTaskDeps(), dms: new DmsClient({}) }));
