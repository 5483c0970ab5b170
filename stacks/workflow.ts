import { functionArnKey, type TaskName, type WORKER_SUBSTITUTIONS, workflowDefinitionJson } from '@pgferry/core';
import { ArnFormat, RemovalPolicy, Stack } from 'aws-cdk-lib';
import type { ISecurityGroup, ISubnet } from 'aws-cdk-lib/aws-ec2';
import { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { DefinitionBody, LogLevel, StateMachine } from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';
import type { Function as SstFunction } from 'sst/constructs';
import { WORKER_CONTAINER_NAME, type Worker } from './worker';

type WorkerSubstitution = (typeof WORKER_SUBSTITUTIONS)[number];

/**
 * Every `${…}` the definition names, with what the stack fills in: the ARN of each Lambda task's
 * function and the worker's cluster, task definition, container and network.
 */
export function definitionSubstitutions(
  functions: Map<TaskName, SstFunction>,
  worker: Worker,
  network: { subnets: ISubnet[]; securityGroups: ISecurityGroup[] },
): Record<string, string> {
  const workerValues: Record<WorkerSubstitution, string> = {
    WorkerClusterArn: worker.cluster.clusterArn,
    WorkerTaskDefinitionArn: worker.taskDefinition.taskDefinitionArn,
    WorkerContainerName: WORKER_CONTAINER_NAME,
    WorkerSubnets: network.subnets.map((s) => s.subnetId).join(','),
    WorkerSecurityGroups: network.securityGroups.map((g) => g.securityGroupId).join(','),
  };
  const functionValues = Object.fromEntries([...functions].map(([task, fn]) => [functionArnKey(task), fn.functionArn]));
  return { ...functionValues, ...workerValues };
}

/**
 * The state machine's ARN, built from its name rather than taken from the construct: the functions
 * that complete task tokens need it in their policies, and the state machine needs their ARNs, so a
 * reference would be a dependency cycle.
 */
export function stateMachineArn(scope: Construct, name: string): string {
  return Stack.of(scope).formatArn({
    service: 'states',
    resource: 'stateMachine',
    resourceName: name,
    arnFormat: ArnFormat.COLON_RESOURCE_NAME,
  });
}

export function migrationStateMachine(
  scope: Construct,
  name: string,
  substitutions: Record<string, string>,
  invoked: SstFunction[],
  worker: Worker,
): StateMachine {
  const logGroup = new LogGroup(scope, 'WorkflowLogs', {
    retention: RetentionDays.SIX_MONTHS,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  const machine = new StateMachine(scope, 'Workflow', {
    stateMachineName: name,
    // The same definition `pgferry workflow print` prints and the local runtime runs.
    definitionBody: DefinitionBody.fromString(workflowDefinitionJson()),
    definitionSubstitutions: substitutions,
    tracingEnabled: true,
    // Execution data stays out of the log: the console keeps each state's input and output already,
    // and a log group is read by more people than the executions are.
    logs: { destination: logGroup, level: LogLevel.ALL, includeExecutionData: false },
  });
  for (const fn of invoked) fn.grantInvoke(machine);
  worker.taskDefinition.grantRun(machine);
  // "Continue in a new execution" starts this same state machine again, before an execution's history
  // reaches Step Functions' limit: its own ARN, built from the fixed name (a reference would be a cycle).
  machine.addToRolePolicy(
    new PolicyStatement({ actions: ['states:StartExecution'], resources: [stateMachineArn(scope, name)] }),
  );
  return machine;
}
