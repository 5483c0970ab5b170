/**
 * One Lambda task of the workflow: validate what the state machine sends, one call into
 * `runWorkflowTask` holding the migration's lease (withTaskLease: no other execution's task acts on
 * it meanwhile), and the figures of "Check lag" and "Cut over" published to CloudWatch. The task's
 * typed error is rethrown as is: its `name` is what the state machine's Retry and Catch match.
 */
import middy from '@middy/core';
import {
  errorMessage,
  InvalidInputError,
  redactText,
  type TaskName,
  type TaskOutput,
  WORKFLOW_TASKS,
  withTaskLease,
} from '@pgferry/core';
import { runWorkflowTask } from '@pgferry/postgres';
import { z } from 'zod';
import { type AwsTaskDeps, awsTaskDeps } from './aws-deps';
import { publishFigures, taskFigures } from './metrics';

/** The payload of a Lambda task state (states.ts: migration id, task name, its inputs, the token of a callback step). */
const taskEvent = z.looseObject({
  migrationId: z.string().min(1),
  task: z.string().min(1),
  taskToken: z.string().min(1).optional(),
});

function parseTaskEvent(task: TaskName, event: unknown) {
  const parsed = taskEvent.safeParse(event);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || 'event';
    throw new InvalidInputError(`the "${task}" function's input: ${field}: ${issue.message}`, {
      field,
      hint: 'this function is invoked by the pgferry state machine, whose task states send { migrationId, task, … }',
    });
  }
  if (parsed.data.task !== task)
    throw new InvalidInputError(`the "${task}" function was sent the "${parsed.data.task}" task`, {
      field: 'task',
      hint: "the state machine's definition substitutions point a state at the wrong function: redeploy the stack",
    });
  return parsed.data;
}

const PUBLISHES_FIGURES = new Set<TaskName>(['checkLag', 'cutover']);

export function createTaskHandler(task: TaskName, deps: () => AwsTaskDeps) {
  return middy<unknown, TaskOutput>().handler(async (event, context) => {
    const input = parseTaskEvent(task, event);
    const d = deps();
    try {
      // Whoever meets this lease is told where to look: the function and its request's log lines.
      const holder = `"${WORKFLOW_TASKS[task].state}" in Lambda ${context?.functionName ?? '?'}, request ${context?.awsRequestId ?? '?'}`;
      // The task works through the store withTaskLease gives it: it refuses every write once the lease is lost.
      const output = await withTaskLease(
        d.store,
        task,
        input,
        holder,
        (store) => runWorkflowTask(task, input, { ...d, store }),
        { log: d.log },
      );
      if (PUBLISHES_FIGURES.has(task)) {
        // Best effort: a missing data point must not fail a step that did its work.
        await d.store
          .get(input.migrationId)
          .then((state) =>
            publishFigures(d.clients.cloudwatch, d.env.stage, input.migrationId, taskFigures(task, state)),
          )
          .catch((err) =>
            d.log(`warning: ${task} of migration ${input.migrationId}: metrics not published: ${errorMessage(err)}`),
          );
      }
      return output;
    } catch (err) {
      d.log(`${task} of migration ${input.migrationId} failed: ${redactText(errorMessage(err))}`);
      throw err;
    }
  });
}

let containerDeps: AwsTaskDeps | undefined;

/** The deployed handler of a task: its clients made once per container, on the first invocation. */
export function taskHandler(task: TaskName) {
  return createTaskHandler(task, () => (containerDeps ??= awsTaskDeps()));
}
