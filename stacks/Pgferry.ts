import { DEPLOYMENT_ENV } from '@pgferry/core';
import type { StackContext } from 'sst/constructs';
import type { DeployConfig } from './config';
import { eventPatterns, pgferryBus, ruleToHandler, stackEnv } from './events';
import { monitoring } from './monitoring';
import { suppressNagFindings } from './nag';
import { importNetwork } from './network';
import {
  attach,
  DMS_EVENT_HANDLER_ACTIONS,
  DMS_TASK_ACTIONS,
  DMS_TASK_EVENT_HANDLER_ACTIONS,
  statements,
} from './permissions';
import { slackResources } from './slack';
import { artifactsBucket, migrationTable } from './storage';
import { pgferryFunction, taskFunctions } from './tasks';
import { worker as workerResources } from './worker';
import { definitionSubstitutions, migrationStateMachine, stateMachineArn } from './workflow';

/**
 * pgferry in one stack: state (table, bucket), the workflow (state machine, one Lambda per short task,
 * the Fargate worker for the long ones), the events that advance it, its own bus, alarms and a dashboard.
 */
export function pgferryStack(config: DeployConfig) {
  return function Pgferry({ stack, app }: StackContext) {
    const table = migrationTable(stack, app.stage);
    const bucket = artifactsBucket(stack);
    const bus = pgferryBus(stack, app.logicalPrefixedName('events'));
    const environment = {
      [DEPLOYMENT_ENV.tableName]: table.tableName,
      [DEPLOYMENT_ENV.busName]: bus.eventBusName,
      [DEPLOYMENT_ENV.bucketName]: bucket.bucketName,
      [DEPLOYMENT_ENV.stage]: app.stage,
    };
    const machineName = app.logicalPrefixedName('migration');
    const machineArn = stateMachineArn(stack, machineName);
    const allow = statements(stack);

    const tasks = taskFunctions(stack, environment);
    const handler = (id: string, file: string, description: string) =>
      pgferryFunction(stack, id, { handler: `functions/${file}.handler`, description, timeout: 60, environment });
    const handlers = {
      rdsInstance: handler('RdsInstanceEvent', 'rds-instance-event', 'pgferry: RDS instance events for a target'),
      dumpCreated: handler(
        'DumpCreated',
        'events/dump-created',
        'pgferry: a dump written under dumps/ (digest checked)',
      ),
      dmsTask: handler('DmsTaskState', 'events/dms-task-state', 'pgferry: DMS replication task state changes'),
      // The same handler file; a function of its own, the only one that may read DMS Serverless replications.
      dmsReplication: handler(
        'DmsReplicationState',
        'events/dms-task-state',
        'pgferry: DMS Serverless replication state changes (read with DescribeReplications)',
      ),
    };
    const network = importNetwork(stack, config);
    const worker = workerResources(stack, network.vpc, environment);
    const workerRole = worker.taskDefinition.taskRole;

    for (const fn of [...tasks.values(), ...Object.values(handlers)]) table.grantReadWriteData(fn);
    table.grantReadWriteData(workerRole);
    for (const fn of tasks.values()) {
      attach(fn, allow.readSecrets(config.secretNamePrefix));
      bus.grantPutEventsTo(fn);
    }
    attach(
      workerRole,
      allow.readSecrets(config.secretNamePrefix),
      allow.completeTaskTokens(machineArn),
      allow.artifacts(bucket.bucketArn),
    );
    bus.grantPutEventsTo(workerRole);
    for (const fn of Object.values(handlers)) attach(fn, allow.completeTaskTokens(machineArn));
    // A target that is already available when the step starts (an adopted instance) sends no event:
    // the task completes its own token.
    attach(
      tasks.get('provisionTarget')!,
      allow.provisionTarget(),
      allow.describeInstances(),
      allow.completeTaskTokens(machineArn),
    );
    attach(handlers.rdsInstance, allow.describeInstances());
    attach(handlers.dumpCreated, allow.readDumps(bucket.bucketArn));
    // The upload step looks for a dump uploaded before its token was stored, and completes its own token then.
    attach(tasks.get('awaitDumpUpload')!, allow.readDumps(bucket.bucketArn), allow.completeTaskTokens(machineArn));
    for (const task of ['checkLag', 'cutover'] as const) attach(tasks.get(task)!, allow.publishMetrics());
    // The cutover switches the application's connection, the rollback puts it back: only they change it.
    if (config.switchTarget)
      for (const task of ['cutover', 'rollback'] as const)
        attach(tasks.get(task)!, allow.connectionSwitch(config.switchTarget));
    // Strategy dms: each task calls exactly its part of DMS; the full-load step may complete its own token.
    const dmsTasks = Object.entries(DMS_TASK_ACTIONS).map(([task, actions]) => {
      const fn = tasks.get(task as keyof typeof DMS_TASK_ACTIONS)!;
      attach(fn, allow.dms(actions));
      return fn;
    });
    attach(tasks.get('awaitDmsFullLoad')!, allow.completeTaskTokens(machineArn));
    // A DMS Serverless event is a prompt: the handler reads the replication itself.
    attach(handlers.dmsReplication, allow.dms(DMS_EVENT_HANDLER_ACTIONS));
    attach(handlers.dmsTask, allow.dms(DMS_TASK_EVENT_HANDLER_ACTIONS));

    const machine = migrationStateMachine(
      stack,
      machineName,
      definitionSubstitutions(tasks, worker, network),
      [...tasks.values()],
      worker,
    );

    const patterns = eventPatterns(bucket.bucketName, stackEnv(stack));
    const rules = {
      rdsInstance: ruleToHandler(
        stack,
        'RdsInstanceRule',
        'RDS instance events for targets pgferry created',
        patterns.rdsInstance,
        handlers.rdsInstance,
      ),
      dumpCreated: ruleToHandler(
        stack,
        'DumpCreatedRule',
        'A dump written under dumps/ in the artifacts bucket',
        patterns.dumpCreated,
        handlers.dumpCreated,
      ),
      dmsTask: ruleToHandler(
        stack,
        'DmsTaskStateRule',
        'DMS replication task state changes',
        patterns.dmsTask,
        handlers.dmsTask,
      ),
      dmsReplication: ruleToHandler(
        stack,
        'DmsReplicationStateRule',
        'DMS Serverless replication state changes',
        patterns.dmsReplication,
        handlers.dmsReplication,
      ),
    };

    const slack = slackResources(stack, config, { environment, table, bus, machineName, machineArn });
    const deadLetters = [...Object.values(rules), ...(slack ? [slack.rule] : [])].map((r) => r.deadLetters);

    const watch = monitoring(stack, {
      stage: app.stage,
      machine,
      deadLetters,
      walRetainedAlarmBytes: config.walRetainedAlarmBytes,
      alarmEmail: config.alarmEmail,
    });

    suppressNagFindings(stack, {
      taskFunctions: [...tasks.values()],
      eventHandlers: Object.values(handlers),
      provisionTarget: tasks.get('provisionTarget')!,
      dumpUploadTask: tasks.get('awaitDumpUpload')!,
      rdsInstanceHandler: handlers.rdsInstance,
      dmsTasks,
      workerTask: worker.taskDefinition,
      stateMachine: machine,
      deadLetterQueues: deadLetters,
      slack,
    });

    stack.addOutputs({
      StateMachineArn: machine.stateMachineArn,
      TableName: table.tableName,
      BucketName: bucket.bucketName,
      BusName: bus.eventBusName,
      Dashboard: watch.dashboard.dashboardName,
      ...(slack
        ? {
            SlackCommandsUrl: `${slack.api.url}/slack/commands`,
            SlackInteractionsUrl: `${slack.api.url}/slack/interactions`,
          }
        : {}),
    });
    return { table, bucket, bus, machine, tasks, handlers, worker, rules, slack, ...watch };
  };
}
