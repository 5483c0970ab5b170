/**
 * `pgferry plan put|list|show` and `pgferry start`: named plans kept in the local state directory, or
 * with `--table` in the deployment's DynamoDB table, and a migration started in AWS from one.
 */
import { readFileSync } from 'node:fs';
import {
  EXIT_CODES,
  errorMessage,
  InvalidInputError,
  type MigrationPlan,
  type MigrationStore,
  migrationPlanSchema,
  PgferryError,
  planIssueField,
  planNotFoundError,
  planProblems,
} from '@pgferry/core';
import type { Output } from './output';
import { FileMigrationStore } from './store';
import { deployedTableStore, loadAwsAdapters } from './worker';

export interface PlanOptions {
  table?: string;
  region?: string;
  stateDir: string;
}

export const PLAN_SUBCOMMANDS = ['put', 'list', 'show'] as const;

/** The local state directory's store, or with --table the deployment's DynamoDB table. */
async function planStore(
  o: PlanOptions,
): Promise<{ store: Required<Pick<MigrationStore, 'putPlan' | 'getPlan' | 'listPlans'>>; where: string }> {
  if (o.region !== undefined && o.table === undefined)
    throw new InvalidInputError('--region applies to the DynamoDB table: give --table too', {
      field: '--region',
      hint: 'pgferry plan --help',
    });
  const store = o.table ? await deployedTableStore(o.table, o.region) : new FileMigrationStore(o.stateDir);
  const { putPlan, getPlan, listPlans } = store;
  if (!putPlan || !getPlan || !listPlans) throw new PgferryError('this store keeps no plans');
  return {
    store: { putPlan: putPlan.bind(store), getPlan: getPlan.bind(store), listPlans: listPlans.bind(store) },
    where: o.table ? `DynamoDB table ${o.table}` : `${o.stateDir}/plans`,
  };
}

/** A plan file (or `-`, stdin) as JSON, checked: each problem named by its field, `plan.approvers.users.0: ...`. */
export function readPlanFile(file: string): MigrationPlan {
  const what = file === '-' ? 'the plan on stdin' : `plan file ${file}`;
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new InvalidInputError(`${what} cannot be read: ${errorMessage(err)}`, { field: 'FILE' });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // The parser's message quotes the text around the fault, which may be a secret pasted by mistake:
    // only where it is, by line and column.
    throw new InvalidInputError(`${what} is not JSON (${jsonFault(text)})`, {
      field: 'FILE',
      hint: 'a plan is one JSON object; `pgferry plan --help` shows one',
    });
  }
  const result = migrationPlanSchema.safeParse(value);
  if (result.success) return result.data;
  const path = planIssueField(result.error);
  throw new InvalidInputError(
    `${what} is not a valid plan: ${planProblems(result.error)
      .map((p) => `plan.${p}`)
      .join('; ')}`,
    {
      field: path ? `plan.${path}` : 'plan',
      hint: 'a plan holds name, source.secretArn, target (kind new or existing), strategy, cutover.policy, switch and approvers; `pgferry plan --help` shows one',
    },
  );
}

function planLine(p: MigrationPlan): string {
  const target =
    p.target.kind === 'new'
      ? `new ${p.target.instanceClass} PostgreSQL ${p.target.engineVersion}`
      : `existing ${p.target.instanceIdentifier}`;
  return `${p.name.padEnd(24)} ${p.strategy.padEnd(9)} cutover ${p.cutover.policy.padEnd(7)} → ${target}${p.description ? `  (${p.description})` : ''}`;
}

export async function planCommand(
  sub: string | undefined,
  positionals: string[],
  o: PlanOptions,
  out: Output,
): Promise<number> {
  if (!sub || !(PLAN_SUBCOMMANDS as readonly string[]).includes(sub))
    throw new InvalidInputError(sub ? `unknown plan subcommand "${sub}"` : 'pgferry plan needs a subcommand', {
      field: 'plan',
      hint: 'pgferry plan put FILE|- · pgferry plan list · pgferry plan show NAME',
    });
  const one = (what: string) => {
    if (positionals.length !== 1)
      throw new InvalidInputError(
        `pgferry plan ${sub} takes one ${what}${positionals.length ? `, not ${positionals.length}` : ''}`,
        {
          field: what,
          hint: 'pgferry plan --help',
        },
      );
    return positionals[0]!;
  };
  if (sub === 'put') {
    const plan = readPlanFile(one('FILE'));
    const { store, where } = await planStore(o);
    const stored = await store.putPlan(plan);
    out.result(stored, `plan ${stored.name} stored in ${where}`);
    return EXIT_CODES.ok;
  }
  if (sub === 'show') {
    const name = one('NAME');
    const { store, where } = await planStore(o);
    const plan = await store.getPlan(name);
    if (!plan) throw planNotFoundError(name, where);
    out.result(plan, JSON.stringify(plan, null, 2));
    return EXIT_CODES.ok;
  }
  if (positionals.length)
    throw new InvalidInputError('pgferry plan list takes no argument', { field: 'plan', hint: 'pgferry plan --help' });
  const { store, where } = await planStore(o);
  const plans = await store.listPlans();
  out.result(plans, plans.length ? plans.map(planLine).join('\n') : `no plans in ${where}`);
  return EXIT_CODES.ok;
}

export interface StartOptions {
  table?: string;
  region?: string;
  stateMachineArn?: string;
  requestedBy?: string;
  id?: string;
}

/** `pgferry start PLAN`: startFromPlan on the deployment's table and state machine. */
export async function startCommand(positionals: string[], o: StartOptions, out: Output): Promise<number> {
  if (positionals.length !== 1)
    throw new InvalidInputError('pgferry start takes the name of one stored plan', {
      field: 'PLAN',
      hint: 'pgferry plan list shows the stored plans; pgferry start --help',
    });
  if (!o.table)
    throw new InvalidInputError('pgferry start needs --table: the deployment’s DynamoDB table of migrations', {
      field: '--table',
      hint: "the stack's output names it (PGFERRY_TABLE_NAME of its functions)",
    });
  if (!o.stateMachineArn)
    throw new InvalidInputError('pgferry start needs --state-machine-arn: the deployment’s pgferry state machine', {
      field: '--state-machine-arn',
      hint: "the stack's output names it",
    });
  const store = await deployedTableStore(o.table, o.region);
  const [aws, { SFNClient }] = await Promise.all([loadAwsAdapters(), import('@aws-sdk/client-sfn')]);
  const sfn = new SFNClient(o.region ? { region: o.region } : {});
  const requestedBy = o.requestedBy ?? process.env.USER ?? 'pgferry CLI';
  const started = await aws.startFromPlan(
    { planName: positionals[0]!, requestedBy, ...(o.id ? { migrationId: o.id } : {}) },
    { store, sfn, stateMachineArn: o.stateMachineArn },
  );
  out.result(
    started,
    `${started.alreadyStarted ? 'already started' : 'started'}: migration ${started.migrationId} from plan ${positionals[0]}\nexecution ${started.executionArn}`,
  );
  return EXIT_CODES.ok;
}

/** Where JSON.parse gives up on `text`, as "line L, column C" (the longest prefix that still parses as far as it goes). */
function jsonFault(text: string): string {
  let lo = 0;
  let hi = text.length;
  // The parser reads left to right: a prefix fails "at the end" until the fault is inside it.
  const failsInside = (n: number) => {
    try {
      JSON.parse(text.slice(0, n));
      return false;
    } catch (err) {
      // Running out of text is "end of JSON input", or a fault placed at the prefix's very end.
      const message = errorMessage(err);
      const at = /at position (\d+)/.exec(message);
      return !/end of JSON input/i.test(message) && !(at && Number(at[1]) >= n);
    }
  };
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (failsInside(mid + 1)) hi = mid;
    else lo = mid + 1;
  }
  const before = text.slice(0, lo);
  const line = before.split('\n').length;
  const column = lo - before.lastIndexOf('\n');
  return lo >= text.length ? 'it ends too early' : `line ${line}, column ${column}`;
}
