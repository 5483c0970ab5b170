import { TASK_NAMES, type TaskName, WORKFLOW_TASKS } from '@pgferry/core';
import { RemovalPolicy } from 'aws-cdk-lib';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { type FunctionProps, Function as SstFunction } from 'sst/constructs';

/** The tasks the state machine invokes as Lambda functions (the others run on the worker). */
export const LAMBDA_TASKS = TASK_NAMES.filter((task) => WORKFLOW_TASKS[task].runtime === 'lambda');

/**
 * How long one invocation may take. The cut-over, the roll-back and the clean-up hold a write gap or
 * drain replication inside one invocation, so they get Lambda's maximum; one gate sample or an
 * assessment is a handful of catalog queries.
 */
const TIMEOUT_SECONDS: Partial<Record<TaskName, number>> = { cutover: 900, rollback: 900, cleanup: 900 };
const DEFAULT_TIMEOUT_SECONDS = 300;

/** `functions/tasks/<task>.ts`, one handler per task. */
export function taskHandlerPath(task: TaskName): string {
  return `functions/tasks/${task}.handler`;
}

/** A Lambda function with a log group the stack owns, so that its retention is set without a custom resource. */
export function pgferryFunction(
  scope: Construct,
  id: string,
  props: FunctionProps & { handler: string; description: string },
): SstFunction {
  const logGroup = new LogGroup(scope, `${id}Logs`, {
    retention: RetentionDays.THREE_MONTHS,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  return new SstFunction(scope, id, { memorySize: 1024, ...props, logGroup });
}

export function taskFunctions(scope: Construct, environment: Record<string, string>): Map<TaskName, SstFunction> {
  const functions = new Map<TaskName, SstFunction>();
  for (const task of LAMBDA_TASKS) {
    const id = `${task[0]!.toUpperCase()}${task.slice(1)}`;
    functions.set(
      task,
      pgferryFunction(scope, id, {
        handler: taskHandlerPath(task),
        description: `pgferry: ${WORKFLOW_TASKS[task].state}`,
        timeout: TIMEOUT_SECONDS[task] ?? DEFAULT_TIMEOUT_SECONDS,
        environment,
      }),
    );
  }
  return functions;
}
