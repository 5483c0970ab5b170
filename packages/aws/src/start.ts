/**
 * Start a migration in AWS from a named plan: what `/pgferry start <plan>` (Slack) and `pgferry start`
 * (the CLI) both call. It writes the migration's record (its config from the plan: secrets by ARN, the
 * target to provision, the switch, the strategy and cutover policy) and starts the state machine's
 * execution named after the migration, with the input the definition's "Start" state reads.
 *
 * A retried start (the same migration id, a Slack retry, a second click) creates nothing twice: the
 * record is kept, and Step Functions refuses a second execution of the same name (ExecutionAlreadyExists),
 * which is then compared with the one this start would have made.
 */
import { DescribeExecutionCommand, type SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import {
  checkMigrationId,
  checkPlanName,
  continuedExecutionName,
  errorMessage,
  InvalidInputError,
  MAX_ROLLBACK_ATTEMPTS,
  type MigrationState,
  type MigrationStore,
  migrationConfigFromPlan,
  newMigrationId,
  PgferryError,
  planNotFoundError,
  resumedExecutionName,
  rollbackExecutionName,
  StateConflictError,
  workflowInputForConfig,
} from '@pgferry/core';

export interface StartFromPlanRequest {
  planName: string;
  /** Who asked (a Slack member id, a CLI user): recorded in the migration's state. */
  requestedBy: string;
  /** Given on a retry, so that it finds the same migration; a new id otherwise. */
  migrationId?: string;
}

export interface StartFromPlanDeps {
  store: MigrationStore;
  sfn: SFNClient;
  stateMachineArn: string;
  now?: () => Date;
}

export interface StartFromPlanResult {
  migrationId: string;
  executionArn: string;
  /** The record and the execution existed already (a retried start): nothing was created. */
  alreadyStarted: boolean;
}

const STATE_MACHINE_ARN = /^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}$/;

/** The ARN of execution `name` of `stateMachineArn`, as Step Functions forms it. */
export function executionArnOf(stateMachineArn: string, name: string): string {
  return `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
}

/** Execution `name`'s status (RUNNING, SUCCEEDED, FAILED…), or undefined when there is none. */
export async function executionStatus(
  deps: Pick<StartFromPlanDeps, 'sfn' | 'stateMachineArn'>,
  name: string,
): Promise<string | undefined> {
  try {
    const out = await deps.sfn.send(
      new DescribeExecutionCommand({ executionArn: executionArnOf(deps.stateMachineArn, name) }),
    );
    return out?.status ?? 'UNKNOWN';
  } catch (err) {
    if ((err as Error).name === 'ExecutionDoesNotExist') return undefined;
    throw err;
  }
}

export async function startFromPlan(
  request: StartFromPlanRequest,
  deps: StartFromPlanDeps,
): Promise<StartFromPlanResult> {
  const planName = checkPlanName(request.planName);
  const requestedBy = typeof request.requestedBy === 'string' ? request.requestedBy.trim() : '';
  if (!requestedBy || requestedBy.length > 200)
    throw new InvalidInputError('requestedBy must name who starts the migration (1-200 characters)', {
      field: 'requestedBy',
    });
  if (!STATE_MACHINE_ARN.test(deps.stateMachineArn ?? ''))
    throw new InvalidInputError(
      `state machine ARN "${deps.stateMachineArn}" is not a Step Functions state machine ARN (arn:aws:states:<region>:<account>:stateMachine:<name>)`,
      { field: '--state-machine-arn', hint: "the stack's output names the pgferry state machine" },
    );
  if (!deps.store.getPlan)
    throw new PgferryError('this migration store keeps no plans', {
      hint: 'start migrations from plans with the DynamoDB store of the deployment',
    });
  const plan = await deps.store.getPlan(planName);
  if (!plan) throw planNotFoundError(planName, storeName(deps.store));
  const now = deps.now?.() ?? new Date();
  const migrationId = checkMigrationId(request.migrationId ?? newMigrationId(now));
  const config = migrationConfigFromPlan(plan, migrationId);

  let existed = false;
  let state = await deps.store.get(migrationId).catch((err: Error) => {
    if (err.name === 'MigrationNotFoundError') return undefined;
    throw err;
  });
  if (!state) {
    // One live migration per plan: a second `/pgferry start` (another Slack request, another id) would
    // run a second migration of the same source into the same target.
    const live = (await deps.store.list()).migrations.find(
      (m) => m.planName === planName && LIVE_STATUSES.includes(m.status),
    );
    if (live)
      throw new StateConflictError(
        `plan ${planName} has a migration in progress already: ${live.id} (${live.status}); nothing was started`,
        {
          field: 'plan',
          migrationId: live.id,
          hint: `follow it (\`pgferry status ${live.id} --stage S\`, \`/pgferry status ${live.id}\`); roll it back or let it finish before starting another`,
        },
      );
    state = initialState(config, planName, requestedBy, now);
    try {
      // The store's vault keeps nothing for ARNs; the URLs handed here carry no password.
      await deps.store.create(state, { sourceUrl: config.sourceUrl, targetUrl: config.targetUrl });
    } catch (err) {
      // Created meanwhile by the same start retried: read it back, as below.
      if ((err as Error).name !== 'InvalidInputError' || !/exists/.test((err as Error).message)) throw err;
      state = await deps.store.get(migrationId);
      existed = true;
    }
  } else existed = true;
  if (existed && state.planName !== planName)
    throw new StateConflictError(
      `migration ${migrationId} exists already${state.planName ? `, started from plan ${state.planName}` : ''}, not from plan ${planName}`,
      { field: 'migrationId', migrationId, hint: 'leave the migration id out to start a new migration' },
    );

  // A migration an execution has run (it recorded itself at "Assess source") whose executions have all
  // ended — a resumable stop, "Stopped (resumable)" — goes on in a new one: the next number, named
  // `<id>-resumed-<n>` (its continuations number on from it, so no name is ever taken twice).
  if (existed && state.execution) return resume(state, migrationId, deps);

  // From the stored config: a retry sends what the first start sent, whatever the plan became since.
  const input = JSON.stringify(workflowInputForConfig(state.config));
  const started = await startOrFind(deps, migrationId, migrationId, input, {
    notStarted: (err) =>
      new PgferryError(`migration ${migrationId} is recorded, but its execution did not start: ${errorMessage(err)}`, {
        cause: err,
        migrationId,
        hint: `start it again with the same id (\`pgferry start ${planName} --id ${migrationId} …\`): the record is reused, nothing is created twice`,
      }),
    conflict: (status, cause) =>
      new StateConflictError(
        `an execution named ${migrationId} exists already with another input (status ${status ?? 'unknown'})`,
        {
          field: 'migrationId',
          migrationId,
          cause,
          hint: 'execution names are never reused: leave the migration id out to start a new migration',
        },
      ),
    ended: true,
  });
  if (started) return started;
  // Its first execution has ended before "Assess source" recorded it: never "already started". The
  // failure it recorded says why (a blocked assessment: nothing to go on with); without one (stopped,
  // or its failure could not be written) the migration goes on in a new execution, as a resume.
  const ended = await deps.store.get(migrationId);
  if (ended.execution) return resume(ended, migrationId, deps);
  if (!LIVE_STATUSES.includes(ended.status))
    throw new StateConflictError(
      `migration ${migrationId} is ${ended.status}: its execution ${migrationId} ended${ended.failure ? ` (${ended.failure.name}: ${ended.failure.message})` : ''}`,
      {
        field: 'migrationId',
        migrationId,
        hint: 'fix what it names, then leave the migration id out to start a new migration from the plan',
      },
    );
  return resume({ ...ended, execution: { name: migrationId, number: 0, since: ended.createdAt } }, migrationId, deps);
}

/** A plan's migration in these states is in progress: another start of the plan is refused. */
const LIVE_STATUSES: MigrationState['status'][] = ['running', 'awaiting-cutover', 'cut-over'];

/** Start the next execution of a stored migration whose executions have ended; nothing if one runs. */
async function resume(
  state: MigrationState,
  migrationId: string,
  deps: StartFromPlanDeps,
): Promise<StartFromPlanResult> {
  const last = state.execution!;
  // Nothing beside a running execution of the migration, nor beside its rollback (Slack's abort or
  // rollback started it; the migration's status changes only once it runs).
  const seen = await executionsOf(state, deps, { rollback: true });
  const [running] = seen.running;
  if (running) return { migrationId, executionArn: running, alreadyStarted: true };
  if (!LIVE_STATUSES.includes(state.status))
    throw new StateConflictError(`migration ${migrationId} is ${state.status}: there is nothing to resume`, {
      field: 'migrationId',
      migrationId,
      hint: 'leave the migration id out to start a new migration from the plan',
    });
  // Someone aborted or rolled it back (Slack starts `<id>-rollback`), and that rollback ended without
  // recording the migration rolled back (it failed): never resumed behind their back.
  const rollback = seen.rollback;
  if (rollback || state.phase === 'rollback')
    throw new StateConflictError(
      `migration ${migrationId} was being rolled back${rollback ? ` (execution ${rollback})` : ''}: it is not resumed`,
      {
        field: 'migrationId',
        migrationId,
        hint: `see what is left with \`pgferry status ${migrationId} --stage S\` and the rollback's execution in the Step Functions console; leave the migration id out to start a new migration from the plan`,
      },
    );
  // The next number; one an earlier resume took whose execution ended before it recorded itself (the
  // source still unreachable, say) is passed over, since Step Functions never reuses a name.
  for (let n = last.number + 1; n <= last.number + MAX_UNRECORDED; n++) {
    const name = resumedExecutionName(migrationId, n);
    const input = JSON.stringify({ ...workflowInputForConfig(state.config), execution: n });
    // The same resume retried (before its execution recorded itself) finds the one it started.
    const started = await startOrFind(deps, migrationId, name, input, {
      notStarted: (err) => err,
      conflict: (status, cause) =>
        new StateConflictError(`an execution named ${name} exists already with another input`, {
          field: 'migrationId',
          migrationId,
          cause,
          hint: `look at the migration (\`pgferry status\`): another process may be resuming it (status ${status ?? 'unknown'})`,
        }),
      ended: true,
    });
    if (started) return started;
  }
  throw new StateConflictError(
    `migration ${migrationId}: the executions ${resumedExecutionName(migrationId, last.number + 1)} to ${resumedExecutionName(migrationId, last.number + MAX_UNRECORDED)} all ended before recording themselves`,
    {
      field: 'migrationId',
      migrationId,
      hint: 'look at why they failed in the Step Functions console (their first state, Assess source), fix it, then resume again',
    },
  );
}

/** Resumed executions that ended without recording themselves passed over at most, and looked for at most. */
const MAX_UNRECORDED = 20;

/**
 * The ARNs of the executions of migration `state` that run now, of those that may: the one "Assess
 * source" recorded last (the first, named after the migration, before any did); the continuation it may
 * have started a moment ago, which has not recorded itself yet (its predecessor has ended then); a
 * resume started a moment ago, not recorded yet either (the resumed names after the last recorded
 * number, as long as there are any); and with `rollback`, the migration's rollback execution.
 * Slack's abort and rollback stop them (not the rollback); a resume starts nothing while one runs.
 */
export async function runningExecutions(
  state: Pick<MigrationState, 'id' | 'execution'>,
  deps: Pick<StartFromPlanDeps, 'sfn' | 'stateMachineArn'>,
  options: { rollback?: boolean } = {},
): Promise<string[]> {
  return (await executionsOf(state, deps, options)).running;
}

/** runningExecutions, and with `rollback` the status of the migration's rollback execution if there is one. */
async function executionsOf(
  state: Pick<MigrationState, 'id' | 'execution'>,
  deps: Pick<StartFromPlanDeps, 'sfn' | 'stateMachineArn'>,
  options: { rollback?: boolean } = {},
): Promise<{ running: string[]; rollback?: string }> {
  const current = state.execution;
  const number = current?.number ?? 0;
  const running: string[] = [];
  /** Execution `name`'s status, undefined if there is none; a running one is added to `running`. */
  const look = async (name: string) => {
    const status = await executionStatus(deps, name);
    if (status === 'RUNNING') running.push(executionArnOf(deps.stateMachineArn, name));
    return status;
  };
  await look(current?.name ?? state.id);
  await look(continuedExecutionName(state.id, number + 1));
  for (let n = number + 1; n <= number + MAX_UNRECORDED && (await look(resumedExecutionName(state.id, n))); n++);
  // Every rollback execution asked for (the next only after the last ended): the last one's status.
  let rollback: string | undefined;
  for (let n = 1; options.rollback && n <= MAX_ROLLBACK_ATTEMPTS; n++) {
    const status = await look(rollbackExecutionName(state.id, n));
    if (!status) break;
    rollback = `${rollbackExecutionName(state.id, n)}: ${status}`;
  }
  return { running, rollback };
}

/** How startOrFind fails; with `ended`, an execution of the name that has ended is passed over (undefined). */
interface StartOrFindErrors {
  notStarted: (err: unknown) => unknown;
  conflict: (status: string | undefined, cause: unknown) => StateConflictError;
  ended?: true;
}

/**
 * Start execution `name` with `input`; one of that name already there (Step Functions refuses a second:
 * ExecutionAlreadyExists) is this request's, retried, when its input is the same, and `conflict` otherwise;
 * any other failure to start is thrown as `notStarted` makes it. With `errors.ended`, one of that name
 * that has ended (whatever its input) is undefined, for the caller to pass over.
 */
async function startOrFind(
  deps: StartFromPlanDeps,
  migrationId: string,
  name: string,
  input: string,
  errors: StartOrFindErrors & { ended: true },
): Promise<StartFromPlanResult | undefined>;
async function startOrFind(
  deps: StartFromPlanDeps,
  migrationId: string,
  name: string,
  input: string,
  errors: StartOrFindErrors,
): Promise<StartFromPlanResult>;
async function startOrFind(
  deps: StartFromPlanDeps,
  migrationId: string,
  name: string,
  input: string,
  errors: StartOrFindErrors,
): Promise<StartFromPlanResult | undefined> {
  const executionArn = executionArnOf(deps.stateMachineArn, name);
  try {
    const out = await deps.sfn.send(new StartExecutionCommand({ stateMachineArn: deps.stateMachineArn, name, input }));
    // The execution began now, whether or not an earlier try had written the record.
    return { migrationId, executionArn: out.executionArn ?? executionArn, alreadyStarted: false };
  } catch (err) {
    if ((err as Error).name !== 'ExecutionAlreadyExists') throw errors.notStarted(err);
    const running = await deps.sfn.send(new DescribeExecutionCommand({ executionArn }));
    if (errors.ended && running.status !== undefined && running.status !== 'RUNNING') return undefined;
    if (running.input !== undefined && sameJson(running.input, input))
      return { migrationId, executionArn, alreadyStarted: true };
    throw errors.conflict(running.status, err);
  }
}

function initialState(
  config: MigrationState['config'],
  planName: string,
  requestedBy: string,
  now: Date,
): MigrationState {
  const at = now.toISOString();
  return {
    id: config.id,
    version: 0,
    createdAt: at,
    updatedAt: at,
    status: 'running',
    phase: 'assess',
    config,
    planName,
    requestedBy,
    phases: {},
    events: [{ at, message: `migration created from plan ${planName} by ${requestedBy}` }],
  };
}

function sameJson(a: string, b: string): boolean {
  try {
    return JSON.stringify(JSON.parse(a)) === JSON.stringify(JSON.parse(b));
  } catch {
    return false;
  }
}

function storeName(store: MigrationStore): string {
  const table = (store as { tableName?: unknown }).tableName;
  const dir = (store as { dir?: unknown }).dir;
  return typeof table === 'string' ? `DynamoDB table ${table}` : typeof dir === 'string' ? dir : 'the store';
}
