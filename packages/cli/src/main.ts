/** The `pgferry` command. */
import { accessSync, constants, lstatSync, mkdirSync, readlinkSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import {
  checkPostgresUrl,
  DEFAULTS,
  deployedTableName,
  EXIT_CODES,
  errorMessage,
  InvalidInputError,
  type MigrationState,
  newMigrationId,
  PgferryError,
  parseMigrationConfig,
  redactUrl,
  SST_APP_NAME,
  WORKER_HEARTBEAT_TIMEOUT_SECONDS,
  workflowDefinitionJson,
} from '@pgferry/core';
import {
  assess,
  connect,
  criticalLabel,
  formatReport,
  inCriticalSection,
  signalStopped,
  switchFileTarget,
  undoInterrupted,
  wasInterrupted,
  whenIdle,
} from '@pgferry/postgres';
import cliPackage from '../package.json' with { type: 'json' };
import { createOutput, describeState, type Output } from './output';
import { planCommand, startCommand } from './plans';
import { reportId, writeHtmlReport } from './report';
import {
  advance,
  checkUrlFiles,
  cleanupMigration,
  createMigration,
  type Runtime,
  rollbackMigration,
  unfreezeMigration,
  useCredentials,
} from './runner';
import { runStatus } from './status';
import { FileMigrationStore, missingDirectories } from './store';
import {
  awsTaskCallbacks,
  deployedTableStore,
  deployedWorkerDumpStore,
  deployedWorkerStore,
  runWorker,
  WORKER_TASKS,
  workerTaskFromEnv,
} from './worker';

/** The --source/--target of commands on a stored migration. */
const CREDENTIALS = `--source URL, --target URL  new credentials (a rotated password) for the same user, server and
                            database as the migration uses; they replace the stored ones and the
                            ones pgferry's subscriptions log in with`;

/** Options of the commands that switch, replacing what migrate was given (say, a fixed --on-switch). */
const SWITCHING = `--on-switch CMD, --switch-file PATH  replace the migration's switch command or file from now on
                            (a command that failed, fixed); --max-prepared-wait-ms N and
                            --max-drain-ms N likewise (a longer write gap allowed)`;

const HELP: Record<string, string> = {
  worker: `pgferry worker — run one workflow task in the worker container (the Fargate task's entry point)

Usage: pgferry worker

The state machine starts the container with ecs:runTask.waitForTaskToken and sets, in its environment:
  PGFERRY_TASK           the task: ${WORKER_TASKS.join(', ')}
  PGFERRY_MIGRATION_ID   the migration to act on
  PGFERRY_TASK_TOKEN     the task token the worker completes (SendTaskSuccess / SendTaskFailure)
  PGFERRY_LOAD_ID        bulkLoad and copyShare: the bulk load attempt the copy plan belongs to
  PGFERRY_SHARE          copyShare: the share of the plan to copy (0-based)
  PGFERRY_HEARTBEAT_SECONDS  between two heartbeats (default 30; the state waits ${WORKER_HEARTBEAT_TIMEOUT_SECONDS})

The worker sends heartbeats while the task runs and completes the token with a short summary, or
with the error's name and message (never a password). It holds the migration's lease while the task
runs; another execution's task finds it held and waits. A refused heartbeat (the execution is gone)
gives the lease up and stops the task (a bulk load's coordinator then drops its replication slot);
work that does not stop by itself within 30 s is ended with the process (exit 1).
Exit code 0 when the task succeeded, otherwise the error's exit code.`,
  main: `pgferry — move a live PostgreSQL database to another server (Amazon RDS) with zero downtime

Usage: pgferry <command> [options]

Commands:
  assess    Check a source (and target) for what would block or complicate a migration
  migrate   Start a migration: schema, bulk load, replication, and (with --cutover auto) cutover and verify
  status    Show one migration (ID; --watch follows it) or list all
  cutover   Cut over a migration waiting at catch-up (--cutover manual), then verify
  rollback  Roll back: before cutover remove what pgferry created; after cutover switch back losing nothing
  cleanup   Remove replication objects and pgferry's marker on both sides after cutover or rollback
  resume    Continue a migration after a crash or an interrupted command
  unfreeze  Make the source writable again without the target (when the target is gone); see its --help
  demo      Start two local servers, migrate a sample database under live writes, print the result
  worker    Run one workflow task in the AWS worker container (Fargate); see its --help
  report    Write one migration's report as one self-contained HTML page: pgferry report ID --html FILE
  workflow print  Print the workflow's state machine definition (Amazon States Language JSON), as deployed
  plan      Store, list and show named plans: pgferry plan put FILE|- · plan list · plan show NAME
  start     Start a migration in AWS from a stored plan: pgferry start PLAN --table T --state-machine-arn ARN

Global options:
  --state-dir DIR   where migration state lives (default ./.pgferry)
  --json            JSON lines on stdout instead of text
  -h, --help        help for a command
  --version         print pgferry's version

Exit codes:
  0 ok · 1 failed · 2 invalid input · 3 cannot connect · 4 assessment blocked
  5 lag or drain timeout · 6 verification mismatch · 7 state changed by another process
  8 not verified: some tables could not be compared (the other side too far behind, or rows changed
    at every read); never a mismatch; resume verifies again
  9 the work after the load failed on the target (a foreign key its rows fail, statistics): nothing
    undone, replication goes on; fix the cause, then resume
  130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP (a write gap is finished first)`,
  assess: `Usage: pgferry assess --source URL [--target URL] [--prepared-orphan-ms N] [--json]
       (or PGFERRY_SOURCE_URL / PGFERRY_TARGET_URL in the environment)

Reads the source (and target) and reports blockers and warnings. Creates nothing. A source older than
PostgreSQL 11 is a blocker.
  --prepared-orphan-ms N  a prepared transaction (two-phase commit) older than N ms is an orphan and
                          blocks (default 300000, 5 min); younger ones are in flight and reported`,
  migrate: `Usage: pgferry migrate --source URL --target URL [options]

  --source URL          postgres://user:password@host:port/database of the live database, PostgreSQL
                        11 or newer with wal_level = logical (or PGFERRY_SOURCE_URL in the environment,
                        kept out of ps)
  --target URL          the new (empty) database, e.g. on Amazon RDS, of the source's version or newer
                        (or PGFERRY_TARGET_URL)
  --strategy S          snapshot (default): slot + exported snapshot + parallel COPY
                        native: CREATE SUBSCRIPTION with copy_data
                        dump: pg_dump -Fc --snapshot to the state dir, then pg_restore --jobs
                        dms: an AWS DMS task (in the deployed pipeline only; refused here)
  --jobs N              parallel copy streams, index builds and verify readers a side, 1 to 64 (default 4)
  --split-table-mb N    tables over N MiB are copied as ranges by several streams at once
                        (default 8192). A split table is loaded without COPY FREEZE, and its
                        streams share the target's cores: with few cores, a larger N loads faster
  --index-memory-mb N   the target's index builds running at once share at most N MiB of
                        maintenance_work_mem (at least 64; default --jobs × 384, and on RDS no more
                        than shared_buffers, a quarter of it on Aurora): set it on a small
                        self-managed target, whose memory pgferry cannot see (a build given less than
                        it needs sorts on disk: slower, not bigger)
  --cutover auto|manual auto: cut over as soon as caught up; manual (default): stop caught up,
                        then run \`pgferry cutover --id ID\`
  --max-lag-ms N        cutover gate: the oldest WAL the target has not confirmed is under N ms
                        old (default 1000)...
  --max-lag-mb N        ...and the WAL it has not confirmed under N MiB (default 16), neither
                        growing, for consecutive samples
  --max-drain-ms N      the drain's budget inside the write gap (default 1000): no freeze when
                        the drain predicted from the measured apply rate is over it; a drain that
                        passes it is given up (source unfrozen, back to catch-up, tried again)
  --verify-wait-ms N    how long verify waits for the other side to apply past the point a
                        table was read at (default 30000); a table it does not reach in time
                        is reported not verified (exit 8), never as a mismatch
  --max-prepared-wait-ms N
                        after the freeze, wait up to N ms for the prepared transactions (two-phase
                        commit) in flight to be committed or rolled back (default 2000); past it
                        the source is unfrozen and the cutover tries again after catching up
  --prepared-orphan-ms N
                        a prepared transaction older than N ms is an orphan: it blocks the
                        assessment and the cutover gate (default 300000, 5 min)
  --switch-file PATH    rewritten atomically with the URL the application must use
                        (its directory must exist: checked before anything is created); a file
                        that exists keeps its mode and group (its owner too, run as root),
                        a link stays a link (its target's directory is checked)
  --on-switch CMD       run at the switch with PGFERRY_ACTIVE_URL, PGFERRY_SOURCE_URL,
                        PGFERRY_TARGET_URL, PGFERRY_DIRECTION in its environment; killed, with
                        what it started, if it has not exited within 30 s (a failed switch)
  --report PATH         write the final state as JSON to PATH (its directory must exist; a report
                        that cannot be written at the end is a warning)
  --id ID               migration id (default generated); object names derive from it
  --yes                 do not ask for confirmation (required when stdin is not a terminal); every
                        option is checked before the question; not answering y is exit 2, Ctrl-C 130
  --json                JSON lines on stdout`,
  status: `Usage: pgferry status [ID] [--offline] [--watch [--interval S]] [--stage S | --table NAME] [--region R]
                      [--source URL] [--target URL] [--json]

Without an id, lists the migrations in the state directory (or, with --table, in the deployed table).
With an id (or --id ID): its status, each phase with its start, end and duration (UTC), the lag in
bytes and seconds with when it was sampled (a local migration waiting at the cutover gate: status samples
it from the source itself, at every --watch frame too; the last recorded sample, with its age, if the source
does not answer, and always with --table/--stage, where the approval wait samples every 10 minutes),
the plan's cutover window (open, or when it opens), the write gap, the verification, and what to do next; then its last workflow
execution state by state (entered, left, duration, summary; the catch-up loop folded into one "Check
lag ×N" line; an execution waiting for the cutover's approval says so); then it checks both servers
(read-only): its replication slots and the WAL they retain, publications,
subscriptions and their apply workers, whether a database is read-only, and whether a pgferry process is
connected. Lines marked ATTENTION need someone (a slot nobody reads after a crash fills the source's
disk) and say which command puts it right. --offline shows only the recorded state.
--watch               redraw the recorded state every --interval seconds (default 2; at least 0.1): in
                      place on a terminal, appended on a pipe (only when it changed). Ends when the
                      migration settles (its execution ended, or it is over) or on Ctrl-C, exit 0
--table NAME          read the migration from a deployed stack's DynamoDB table instead of the state
                      directory (recorded state only; the execution is in the Step Functions console);
                      --region R its region (default: the AWS environment's, as the AWS SDK finds it)
--stage S             the table \`npx sst deploy --stage S\` made (S-pgferry-Migrations): --table for short
status changes nothing, except with --source/--target:
${CREDENTIALS}`,
  cutover: `Usage: pgferry cutover --id ID [--report PATH] [--on-switch CMD] [--switch-file PATH]
                       [--max-prepared-wait-ms N] [--max-drain-ms N] [--source URL] [--target URL] [--json]

Waits for the cutover gate, verifies every table before anything is frozen (once; a proven
difference stops here, exit 6, the application still on the source), freezes writes, drains,
switches, verifies again. --report PATH writes the final state as JSON (default: the path given to
migrate).
${SWITCHING}
${CREDENTIALS}`,
  rollback: `Usage: pgferry rollback --id ID [--on-switch CMD] [--switch-file PATH] [--max-prepared-wait-ms N]
                        [--max-drain-ms N] [--source URL] [--target URL] [--json]

After the cutover: the target is frozen only when the reverse drain predicted from a catch-up just
before fits the --max-drain-ms budget, and a drain that passes it inside the write gap is given up
(target unfrozen, the application stays on it): run rollback again once reverse lag is low.
${SWITCHING}
${CREDENTIALS}`,
  cleanup: `Usage: pgferry cleanup --id ID [--force] [--without-target] [--source URL] [--target URL] [--json]

--force cleans up a migration that is still replicating (it stops replication).
--without-target, when the target is gone for good and cannot be reached: removes what pgferry left on
the source (its replication slot retains the source's WAL until it is dropped, its publications, the
reverse subscription) and forgets what it left on the target (named in the result, to drop by hand if
the target comes back). A target that answers is cleaned up as always. A source read-only because the
application was switched to the target needs \`pgferry unfreeze\` first.
A source a cutover froze and never switched from is made writable again. Refused while a rollback or a
cutover's switch is half done: \`pgferry rollback\` / \`pgferry resume\` finishes it first (after
\`pgferry unfreeze\`, which ends both, it goes ahead).
${CREDENTIALS}`,
  resume: `Usage: pgferry resume --id ID [--report PATH] [--on-switch CMD] [--switch-file PATH]
                      [--max-prepared-wait-ms N] [--max-drain-ms N] [--source URL] [--target URL] [--json]

Continues from the last recorded step; cuts over only if the migration was started with --cutover auto.
--report PATH writes the final state as JSON (default: the path given to migrate).
${SWITCHING}
${CREDENTIALS}`,
  unfreeze: `Usage: pgferry unfreeze --id ID --yes [--source URL] [--json]

The way back when the target is gone: a rollback needs the target (it drains the writes made there and
syncs the sequences back), so without it the source stays read-only. This stops reverse replication into
the source (so a target that comes back applies nothing more into it) and makes the source writable; it
does not switch the application (point it at the source yourself, or run the switch command).

RISK: every write the application made on the target that reverse replication had not yet brought to the
source is NOT on the source, and the source's sequences were not synced from the target, so new rows may
take keys the target already used (duplicate keys when the data is brought together later). Use it only
when the target cannot come back in time; --yes says you accept this. Afterwards rollback, resume and
cutover of this migration are refused, even once the target is back; cleanup removes what is left.
Refused (exit 2, nothing changed) when the source is not frozen and the application was never switched.`,
  report: `Usage: pgferry report ID --html FILE   (or --id ID)  [--stage S | --table NAME] [--region R]

Writes one self-contained HTML page (no script, font or image loaded from anywhere; readable offline)
from the recorded state: the phase timeline, replication lag over time (bytes and seconds), the write
gap step by step, and the verification before and after the switch, table by table. The file is
written readable by its owner only (it names the servers; no password is in it). Reads no server.
--stage S / --table NAME  a migration a deployed stack recorded (as for pgferry status), not the state
                          directory's`,
  workflow: `Usage: pgferry workflow print

Prints the state machine definition (Amazon States Language JSON) that the stack deploys and that
migrate, resume, cutover and rollback run locally. \${...} placeholders are the stack's
definitionSubstitutions: the Lambda functions' ARNs and the worker's cluster, task definition,
container, subnets and security groups.`,
  plan: `Usage: pgferry plan put FILE|-     store the plan in FILE (- reads stdin), replacing one of its name
       pgferry plan list            list the stored plans
       pgferry plan show NAME       print one plan as JSON
Options: --table TABLE [--region R]  the deployment's DynamoDB table instead of the state directory
         (--stage S: the table \`npx sst deploy --stage S\` made, S-pgferry-Migrations)
         (credentials, region and endpoint from the standard AWS configuration: AWS_PROFILE,
         AWS_REGION, AWS_ENDPOINT_URL_DYNAMODB...)

A plan names everything a migration in AWS needs, secrets by ARN only (a password is refused):
  {"name": "shop-to-rds",
   "source": {"secretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-source"},
   "target": {"kind": "new", "instanceClass": "db.r6g.large", "engineVersion": "17",
              "allocatedStorageGiB": 100, "dbSubnetGroupName": "shop-db", "vpcSecurityGroupIds": ["sg-0123abcd"],
              "dbName": "shop"},
   "strategy": "snapshot", "cutover": {"policy": "manual"},
   "switch": {"kind": "secret", "secretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-app"},
   "approvers": {"users": ["U024BE7LH"]}, "copyWorkers": 2,
   "cleanup": "automatic", "bakeSeconds": 86400}
target may also be {"kind": "existing", "instanceIdentifier": "...", "secretArn": "..."}; a new one takes
"multiAz" (default true) and "parameterGroupName" (used as it is; logical replication must be on).
"cleanup": "automatic" cleans up after a bake of bakeSeconds (default a day), only after a verify that found
the sides equal; "manual" (default) does not. "strategy": "dms" needs an existing target and a "dms" block:
{"secretsAccessRoleArn": "...", "compute": {"kind": "instance", "replicationInstanceArn": "..."}}, or DMS
Serverless: "compute": {"kind": "serverless", "maxCapacityUnits": 16, "replicationSubnetGroupId": "...",
"minCapacityUnits"?, "vpcSecurityGroupIds"?, "multiAz"?} (DCUs: 1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384). Both
secrets must hold host, port, username and password: DMS reads the endpoint from them. A plan is
checked when stored and again when read; each problem is named by its field (plan.approvers.users.0).`,
  start: `Usage: pgferry start PLAN (--stage S | --table TABLE) --state-machine-arn ARN [--region R] [--id ID]
                     [--requested-by WHO]

Starts a migration in AWS from the stored plan PLAN (pgferry plan put --table ...), as Slack's
/pgferry start does: writes the migration's record in the DynamoDB table (its config from the plan;
secrets by ARN, never a password) and starts the state machine's execution named after the migration.
--stage S       the table \`npx sst deploy --stage S\` made (S-pgferry-Migrations); or --table TABLE
--id ID         the migration id (default generated); the same id again starts nothing twice, and
                resumes a migration that stopped resumable once its last execution ended (<id>-resumed-<n>)
--requested-by  who asks, recorded in the migration (default $USER)
Then follow it in the Step Functions console; a manual cutover is approved from Slack.`,
  demo: 'Usage: pgferry demo [--target-version 15|16|17] [--rows N]\n\nStarts a source (PostgreSQL 15) and a target server, runs a live writer, migrates with automatic cutover.',
};

const OPTIONS = {
  source: { type: 'string' },
  target: { type: 'string' },
  strategy: { type: 'string' },
  jobs: { type: 'string' },
  'split-table-mb': { type: 'string' },
  'index-memory-mb': { type: 'string' },
  cutover: { type: 'string' },
  'max-lag-ms': { type: 'string' },
  'max-lag-mb': { type: 'string' },
  'max-drain-ms': { type: 'string' },
  'verify-wait-ms': { type: 'string' },
  'max-prepared-wait-ms': { type: 'string' },
  'prepared-orphan-ms': { type: 'string' },
  'switch-file': { type: 'string' },
  'on-switch': { type: 'string' },
  report: { type: 'string' },
  id: { type: 'string' },
  yes: { type: 'boolean' },
  json: { type: 'boolean' },
  force: { type: 'boolean' },
  'without-target': { type: 'boolean' },
  offline: { type: 'boolean' },
  watch: { type: 'boolean' },
  interval: { type: 'string' },
  table: { type: 'string' },
  stage: { type: 'string' },
  region: { type: 'string' },
  rows: { type: 'string' },
  'target-version': { type: 'string' },
  'state-dir': { type: 'string' },
  html: { type: 'string' },
  'state-machine-arn': { type: 'string' },
  'requested-by': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

/** The options each command takes, besides the global ones (--state-dir, --json, --help). */
const COMMAND_OPTIONS: Record<string, ReadonlyArray<keyof typeof OPTIONS>> = {
  assess: ['source', 'target', 'prepared-orphan-ms'],
  migrate: [
    'source',
    'target',
    'strategy',
    'jobs',
    'split-table-mb',
    'index-memory-mb',
    'cutover',
    'max-lag-ms',
    'max-lag-mb',
    'max-drain-ms',
    'verify-wait-ms',
    'max-prepared-wait-ms',
    'prepared-orphan-ms',
    'switch-file',
    'on-switch',
    'report',
    'id',
    'yes',
  ],
  status: ['id', 'offline', 'source', 'target', 'watch', 'interval', 'table', 'stage', 'region'],
  cutover: ['id', 'report', 'source', 'target', 'on-switch', 'switch-file', 'max-prepared-wait-ms', 'max-drain-ms'],
  rollback: ['id', 'source', 'target', 'on-switch', 'switch-file', 'max-prepared-wait-ms', 'max-drain-ms'],
  cleanup: ['id', 'force', 'without-target', 'source', 'target'],
  resume: ['id', 'report', 'source', 'target', 'on-switch', 'switch-file', 'max-prepared-wait-ms', 'max-drain-ms'],
  unfreeze: ['id', 'yes', 'source'],
  demo: ['target-version', 'rows'],
  worker: [],
  report: ['id', 'html', 'table', 'stage', 'region'],
  workflow: [],
  plan: ['table', 'stage', 'region'],
  start: ['table', 'stage', 'region', 'state-machine-arn', 'requested-by', 'id'],
};
const GLOBAL_OPTIONS: ReadonlyArray<keyof typeof OPTIONS> = ['state-dir', 'json', 'help', 'version'];

/** An option the command does not take is an error, not silently ignored (`status --jobs 3`). */
function checkOptions(command: string, values: Record<string, unknown>) {
  const allowed = COMMAND_OPTIONS[command];
  if (!allowed) return; // an unknown command is named as such below
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined || GLOBAL_OPTIONS.includes(name as keyof typeof OPTIONS)) continue;
    if (!allowed.includes(name as keyof typeof OPTIONS))
      throw new InvalidInputError(`--${name} does not apply to pgferry ${command}`, {
        field: `--${name}`,
        hint: `pgferry ${command} --help lists its options`,
      });
    // `--id ""` (an unset shell variable, say) is not "no --id": status would list every migration.
    if (value === '')
      throw new InvalidInputError(`--${name} is empty`, {
        field: `--${name}`,
        hint: `pgferry ${command} --help says what it takes`,
      });
  }
}

function int(value: string | undefined, field: string, range?: { min: number; max?: number }): number | undefined {
  if (value === undefined) return undefined;
  const accepts = range ? ` from ${range.min}${range.max === undefined ? ' up' : ` to ${range.max}`}` : '';
  const n = Number(value);
  if (!/^-?\d+$/.test(value.trim()) || (range && (n < range.min || (range.max !== undefined && n > range.max))))
    throw new InvalidInputError(`${field} must be a whole number${accepts} (got "${value}")`, { field });
  return n;
}

/**
 * An option given twice with two values (`--source A … --source B`, a script's default and its
 * override): parseArgs keeps the last, silently, and a migration would run against the other server
 * than the one meant. Refused, naming the option (not its values). The same value twice is harmless.
 */
function refuseRepeated(tokens: Array<{ kind: string; name?: string; value?: string }>) {
  const given = new Map<string, string | undefined>();
  for (const t of tokens) {
    if (t.kind !== 'option' || !t.name) continue;
    if (given.has(t.name) && given.get(t.name) !== t.value)
      throw new InvalidInputError(
        // (Not the values: a URL's password, a command's secrets.)
        `--${t.name} is given twice, with two different values: give it once`,
        { field: `--${t.name}` },
      );
    given.set(t.name, t.value);
  }
}

/**
 * A value that starts with a dash (`--jobs -1`) is refused by the argument parser as "ambiguous";
 * given as `--jobs=-1` instead, it reaches the option's own check, which says what the option accepts.
 */
function joinDashValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const name = arg.startsWith('--') ? arg.slice(2) : undefined;
    const next = args[i + 1];
    const option = name ? OPTIONS[name as keyof typeof OPTIONS] : undefined;
    if (option?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

/**
 * A file pgferry will write later (the switch file at the cutover, the report at the end): checked
 * before anything is created, so a typo fails now with the flag named, not after an hour of load.
 */
function writablePath(value: string | undefined, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (!value.trim()) throw new InvalidInputError(`${field} is empty; give the path of a file`, { field });
  const given = resolve(value);
  // A link is written where it points: that file's directory is the one checked.
  const path = field === '--switch-file' ? switchFileTarget(given) : given;
  const dir = dirname(path);
  const info = statSync(path, { throwIfNoEntry: false });
  if (info?.isDirectory())
    throw new InvalidInputError(`${field} ${path} is a directory; give the path of a file in it`, { field });
  const parent = statSync(dir, { throwIfNoEntry: false });
  if (!parent?.isDirectory())
    throw new InvalidInputError(`${field} ${path}: the directory ${dir} does not exist`, {
      field,
      hint: `create it first (mkdir -p ${dir}) or give another path`,
    });
  try {
    accessSync(dir, constants.W_OK);
    if (info) accessSync(path, constants.W_OK);
  } catch {
    throw new InvalidInputError(`${field} ${path} cannot be written by this user`, { field });
  }
  return given;
}

/**
 * The state directory: a directory, or a path where one can be made. For a command that writes state
 * (`writes`), checked writable, or that it can be made: a directory this user may not write (EACCES)
 * failed only when the state was first written, with the raw error, and a path under /proc hung.
 */
function stateDirectory(value: string | undefined, writes = false): string {
  if (value !== undefined && !value.trim())
    throw new InvalidInputError('--state-dir is empty; give a directory', { field: '--state-dir' });
  const dir = resolve(value ?? '.pgferry');
  let info: ReturnType<typeof statSync>;
  try {
    info = statSync(dir, { throwIfNoEntry: false });
  } catch (err) {
    // A file on the way (ENOTDIR), a directory it may not enter (EACCES): named, never a raw error.
    throw new InvalidInputError(`--state-dir ${dir} cannot be used (${(err as NodeJS.ErrnoException).code ?? err})`, {
      field: '--state-dir',
      hint: 'give the directory that holds pgferry state (default ./.pgferry), or one that can be made',
    });
  }
  if (info && !info.isDirectory())
    throw new InvalidInputError(`--state-dir ${dir} is a file, not a directory`, {
      field: '--state-dir',
      hint: 'give the directory that holds pgferry state (default ./.pgferry)',
    });
  if (writes)
    try {
      if (info) accessSync(dir, constants.W_OK | constants.X_OK);
      else {
        // Made for a moment where it would be made (its first missing directory), then removed: nothing
        // is left behind by a command that fails later (a bad URL, say).
        const first = missingDirectories(dir).at(-1) ?? dir;
        const link = lstatSync(first, { throwIfNoEntry: false });
        if (link?.isSymbolicLink())
          throw new InvalidInputError(
            `--state-dir ${dir}: ${first} is a link to ${readlinkSync(first)}, which does not exist`,
            { field: '--state-dir', hint: 'make the directory it points to, or give another --state-dir' },
          );
        try {
          mkdirSync(first, { mode: 0o700 });
          rmdirSync(first);
        } catch (err) {
          // Made meanwhile by another pgferry process: there it is.
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }
    } catch (err) {
      if (err instanceof InvalidInputError) throw err;
      throw new InvalidInputError(
        `--state-dir ${dir} cannot be ${info ? 'written' : 'made'} (${(err as NodeJS.ErrnoException).code ?? err})`,
        { field: '--state-dir', hint: 'give a directory this user may write (default ./.pgferry)' },
      );
    }
  return dir;
}

/** The commands that write a migration's state (the others only read it). */
const WRITES_STATE = ['migrate', 'cutover', 'resume', 'rollback', 'cleanup', 'unfreeze'];

/** A size given in MiB, as bytes; at least 1 MiB. */
function mebibytes(value: string | undefined, field: string): number | undefined {
  const n = int(value, field);
  if (n === undefined) return undefined;
  if (n < 1) throw new InvalidInputError(`${field} must be at least 1 (MiB)`, { field });
  return n * 1024 * 1024;
}

function demoVersion(v: number): 15 | 16 | 17 {
  if (v === 15 || v === 16 || v === 17) return v;
  throw new InvalidInputError(`--target-version must be 15, 16 or 17 (got ${v})`, { field: '--target-version' });
}

function need(value: string | undefined, field: string, command: string): string {
  if (!value) throw new InvalidInputError(`${field} is required`, { field, hint: `pgferry ${command} --help` });
  return value;
}

/** The person's answer; 'interrupted' for Ctrl-C at the question. */
async function confirm(question: string): Promise<boolean | 'interrupted'> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } catch (err) {
    if ((err as { code?: string }).code === 'ABORT_ERR') return 'interrupted';
    throw err;
  } finally {
    rl.close();
  }
}

/** The report is a copy of the state: one that cannot be written is a warning, never a failed migration. */
function writeReport(path: string | undefined, state: MigrationState, out: Output) {
  if (!path) return;
  try {
    writeFileSync(resolve(path), `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  } catch (err) {
    out.log(
      `warning: the report could not be written to ${path} (${errorMessage(err)}); \`pgferry status --id ${state.id} --offline --json\` prints the same state`,
    );
  }
}

function finalText(s: MigrationState): string {
  if (s.status === 'awaiting-cutover') {
    return `${describeState(s)}\n\nCaught up and replicating. When ready: pgferry cutover --id ${s.id}   (or: pgferry rollback --id ${s.id})`;
  }
  if (s.status === 'cut-over') {
    return `${describeState(s)}\n\nThe application now uses the target; reverse replication keeps the source current.\nTo go back: pgferry rollback --id ${s.id}   When satisfied: pgferry cleanup --id ${s.id}`;
  }
  return describeState(s);
}

function exitCodeFor(s: MigrationState): number {
  const outcome = s.verify ? (s.verify.outcome ?? (s.verify.ok ? 'ok' : 'mismatch')) : 'ok';
  if (outcome === 'mismatch') return EXIT_CODES.verificationFailed;
  if (outcome === 'behind') return EXIT_CODES.notVerified;
  return EXIT_CODES.ok;
}

/** This CLI's version (its package.json, bundled in). */
const CLI_VERSION: string = cliPackage.version;

/** Exit codes of the signals handled like Ctrl-C (128 + the signal's number, as shells report them). */
const SIGNAL_EXIT = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 } as const;

/**
 * Ctrl-C: stop at once, except inside a cutover's write gap, which is finished (or undone) first so the
 * source is never left frozen by an impatient keypress, and during the copy, whose slot is dropped
 * first (within 10 s): a resume starts the copy again anyway. A second Ctrl-C forces the exit.
 * SIGTERM (a service manager, `timeout`, a CI job) and SIGHUP (a dropped SSH session) are handled the
 * same way: by default they would end the process in the middle of the write gap.
 */
function handleInterrupts() {
  // A closed pipe or terminal (SIGHUP) must not take the process down in the middle of a write gap.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
  let stopping = false;
  const say = (m: string) => {
    try {
      process.stderr.write(`\n${m}\n`);
    } catch {
      // the terminal may be gone
    }
  };
  for (const [signal, code] of Object.entries(SIGNAL_EXIT)) {
    process.on(signal, () => {
      // Only a second Ctrl-C forces the exit: SIGHUP comes twice when an SSH session drops.
      if (stopping) {
        if (signal === 'SIGINT') {
          signalStopped(`${signal}, twice`);
          process.exit(code);
        }
        return;
      }
      stopping = true;
      const exit = () => {
        signalStopped(signal);
        say('stopped. `pgferry status` shows where; `pgferry resume --id …` or `pgferry rollback --id …` continues.');
        process.exit(code);
      };
      if (inCriticalSection()) {
        say(`${signal}: finishing ${criticalLabel()}; Ctrl-C to force`);
        void whenIdle().then(exit);
        return;
      }
      // What only this run could use (the slot of an unfinished copy) goes first, briefly.
      void undoInterrupted(10_000).then((undone) => {
        for (const u of undone) say(`${signal}: ${u}`);
        exit();
      });
    });
  }
}

/** Options every command takes, which a person may also write before the command (`pgferry --json status`). */
const LEADING_OPTIONS = ['--json', '--version'];

export async function main(args: string[]): Promise<number> {
  const leading = args.slice(
    0,
    args.findIndex((a) => !LEADING_OPTIONS.includes(a)),
  );
  const argv =
    leading.length && args[leading.length] && !args[leading.length]!.startsWith('-')
      ? [args[leading.length]!, ...leading, ...args.slice(leading.length + 1)]
      : args;
  const command = argv[0] && !argv[0].startsWith('-') ? argv[0] : undefined;
  // `workflow` takes a subcommand (`print`); `report` takes the migration id as its one positional argument.
  const subcommand =
    (command === 'workflow' || command === 'plan') && argv[1] && !argv[1].startsWith('-') ? argv[1] : undefined;
  let values: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];
  let positionals: string[] = [];
  let out: Output = createOutput({ json: argv.includes('--json') });
  try {
    try {
      let tokens: Array<{ kind: string; name?: string; value?: string }>;
      ({ values, positionals, tokens } = parseArgs({
        args: joinDashValues(argv.slice(command ? (subcommand ? 2 : 1) : 0)),
        options: OPTIONS,
        // `report` and `status` take the id (as issue 13 spells them), `plan` a file or name, `start` a plan; the others --id.
        allowPositionals: command === 'report' || command === 'status' || command === 'plan' || command === 'start',
        strict: true,
        tokens: true,
      }));
      refuseRepeated(tokens);
    } catch (err) {
      if (err instanceof InvalidInputError) throw err;
      throw new InvalidInputError((err as Error).message, {
        hint: `pgferry ${command ?? ''} --help`.replace('  ', ' '),
      });
    }
    out = createOutput({ json: !!values.json });
    // (Before or after a command, as --json: the version, whatever else is asked.)
    if (values.version) {
      out.result({ version: CLI_VERSION, node: process.version }, `pgferry ${CLI_VERSION} (Node ${process.version})`);
      return EXIT_CODES.ok;
    }
    if (!command || values.help) {
      process.stdout.write(`${HELP[command ?? 'main'] ?? HELP.main}\n`);
      return command || values.help ? EXIT_CODES.ok : EXIT_CODES.invalidInput;
    }
    checkOptions(command, values);
    // `--stage S`: the table `npx sst deploy --stage S` made (the stack names it from the stage).
    if (values.stage !== undefined) {
      if (values.table !== undefined)
        throw new InvalidInputError('give --stage or --table, not both', {
          field: '--stage',
          hint: `--stage S reads the table S-${SST_APP_NAME}-Migrations; --table names any other`,
        });
      values.table = deployedTableName(values.stage);
    }
    if (['migrate', 'cutover', 'resume', 'rollback', 'cleanup', 'unfreeze', 'worker'].includes(command))
      handleInterrupts();
    if (command === 'workflow') {
      if (subcommand !== 'print')
        throw new InvalidInputError(
          subcommand ? `unknown workflow subcommand "${subcommand}"` : 'pgferry workflow needs a subcommand',
          { field: 'workflow', hint: 'pgferry workflow print' },
        );
      process.stdout.write(`${workflowDefinitionJson()}\n`);
      return EXIT_CODES.ok;
    }
    const stateDir = stateDirectory(values['state-dir'], WRITES_STATE.includes(command));
    // Where the command will write, checked before anything is created.
    const reportPath = writablePath(values.report, '--report');
    const switchFile = writablePath(values['switch-file'], '--switch-file');
    const rt: Runtime = { store: new FileMigrationStore(stateDir), stateDir, events: out };
    // A stored migration's commands take --source/--target only to bring new credentials (a rotated password).
    // (`pgferry status ID` names it as its argument.)
    const storedId = values.id ?? (command === 'status' ? positionals[0] : undefined);
    if (command === 'status' && values.table && (values.source || values.target))
      throw new InvalidInputError('--source/--target bring new credentials to a local migration, not to --table', {
        field: values.source ? '--source' : '--target',
      });
    if (command !== 'migrate' && command !== 'assess' && storedId && (values.source || values.target))
      await useCredentials(
        rt,
        storedId,
        { sourceUrl: values.source, targetUrl: values.target },
        // status too, as the README says: with the old password a subscription stops at its next reconnect.
        // (Not unfreeze, nor a clean-up without the target: the target it is used for is gone.)
        { subscriptions: command !== 'unfreeze' && !(command === 'cleanup' && values['without-target']) },
      );
    // Stored by the command once it is allowed to run (claimed, its state checked): a refused one changes nothing.
    const changes = {
      onSwitch: values['on-switch'],
      switchFile: values['switch-file'] ? resolve(values['switch-file']) : undefined,
      maxPreparedWaitMs: int(values['max-prepared-wait-ms'], '--max-prepared-wait-ms'),
      maxDrainMs: int(values['max-drain-ms'], '--max-drain-ms', { min: 10 }),
    };

    switch (command) {
      case 'assess': {
        // Checked as migrate checks them: a URL assess accepts is one migrate accepts.
        const sourceUrl = checkPostgresUrl(
          need(values.source ?? process.env.PGFERRY_SOURCE_URL, '--source', 'assess'),
          '--source',
        );
        const given = values.target ?? process.env.PGFERRY_TARGET_URL;
        const targetUrl = given === undefined ? undefined : checkPostgresUrl(given, '--target');
        checkUrlFiles(sourceUrl, '--source');
        checkUrlFiles(targetUrl, '--target');
        const source = await connect(sourceUrl, { side: 'source', applicationName: 'pgferry:assess' });
        const target = targetUrl
          ? await connect(targetUrl, { side: 'target', applicationName: 'pgferry:assess' }).catch(async (e) => {
              await source.end();
              throw e;
            })
          : undefined;
        try {
          const report = await assess(source, target, {
            preparedOrphanMs: int(values['prepared-orphan-ms'], '--prepared-orphan-ms'),
          });
          out.result(report, formatReport(report));
          return report.findings.some((f) => f.level === 'blocker') ? EXIT_CODES.assessmentBlocked : EXIT_CODES.ok;
        } finally {
          await source.end();
          await target?.end();
        }
      }
      case 'migrate': {
        // Before anything else (the confirmation, the state): DMS is an AWS service, driven by the deployed pipeline.
        if (values.strategy === 'dms')
          throw new InvalidInputError(
            '--strategy dms runs in AWS only: the DMS task, its events and its CloudWatch latency are driven by the deployed pipeline, not by this command',
            {
              field: '--strategy',
              hint: 'start a dms migration in the deployed pipeline (a plan with strategy dms), or choose --strategy snapshot, native or dump here',
            },
          );
        const input = {
          id: values.id ?? newMigrationId(),
          // From the environment too, so passwords need not sit on a command line (visible in ps).
          sourceUrl: values.source ?? process.env.PGFERRY_SOURCE_URL,
          targetUrl: values.target ?? process.env.PGFERRY_TARGET_URL,
          strategy: values.strategy,
          jobs: int(values.jobs, '--jobs', { min: 1, max: 64 }),
          splitTableBytes: mebibytes(values['split-table-mb'], '--split-table-mb'),
          indexMemoryMB: int(values['index-memory-mb'], '--index-memory-mb', { min: DEFAULTS.indexBuildMemoryMinMB }),
          cutover: values.cutover,
          maxLagMs: int(values['max-lag-ms'], '--max-lag-ms', { min: 1 }),
          maxLagBytes: mebibytes(values['max-lag-mb'], '--max-lag-mb'),
          maxDrainMs: int(values['max-drain-ms'], '--max-drain-ms', { min: 10 }),
          verifyWaitMs: int(values['verify-wait-ms'], '--verify-wait-ms', { min: 1 }),
          maxPreparedWaitMs: int(values['max-prepared-wait-ms'], '--max-prepared-wait-ms', { min: 0 }),
          preparedOrphanMs: int(values['prepared-orphan-ms'], '--prepared-orphan-ms', { min: 1 }),
          switchFile,
          onSwitch: values['on-switch'],
          reportPath,
        };
        for (const [k, v] of Object.entries(input)) if (v === undefined) delete (input as Record<string, unknown>)[k];
        // Every option checked before anyone is asked to confirm it (createMigration checks them again).
        parseMigrationConfig(input);
        if (!values.yes) {
          if (!process.stdin.isTTY) {
            throw new InvalidInputError(
              'migrate changes both servers; pass --yes to run without a terminal to confirm on',
              { field: '--yes' },
            );
          }
          const ok = await confirm(
            `Migrate ${redactUrl(String(input.sourceUrl))} → ${redactUrl(String(input.targetUrl))}? This creates a publication and a replication slot on the source and loads the target.`,
          );
          if (ok === 'interrupted') {
            process.stderr.write('\nnot confirmed (Ctrl-C): nothing was created\n');
            return SIGNAL_EXIT.SIGINT;
          }
          if (!ok)
            throw new InvalidInputError('not confirmed: nothing was created', {
              field: '--yes',
              hint: 'answer y to go on, or pass --yes',
            });
        }
        const created = await createMigration(rt, input);
        out.log(`migration ${created.id} (state in ${stateDir})`);
        const state = await advance(rt, created.id, { cutover: created.config.cutover }).catch(async (err) => {
          // Nothing was created, and nothing goes on from a blocked assessment (a new migration does):
          // its passwords are not kept on disk for nobody.
          if ((err as Error)?.name === 'AssessmentBlockedError') await rt.store.removeSecrets?.(created.id);
          throw err;
        });
        writeReport(reportPath, state, out);
        out.result(state, finalText(state));
        return exitCodeFor(state);
      }
      case 'status':
        return await runStatus(
          {
            positionals,
            id: values.id,
            offline: values.offline,
            watch: values.watch,
            interval: values.interval,
            table: values.table,
            region: values.region,
          },
          rt,
          out,
        );
      case 'cutover': {
        const id = need(values.id, '--id', 'cutover');
        // The report migrate was given is brought up to date, as resume does.
        const given = reportPath ?? (await rt.store.get(id)).config.reportPath;
        const state = await advance(rt, id, { cutover: 'now', changes });
        writeReport(given, state, out);
        out.result(state, finalText(state));
        return exitCodeFor(state);
      }
      case 'resume': {
        const id = need(values.id, '--id', 'resume');
        const s = await rt.store.get(id);
        const state = await advance(rt, id, { cutover: s.status === 'cut-over' ? 'now' : s.config.cutover, changes });
        writeReport(reportPath ?? s.config.reportPath, state, out);
        out.result(state, finalText(state));
        return exitCodeFor(state);
      }
      case 'rollback': {
        const state = await rollbackMigration(rt, need(values.id, '--id', 'rollback'), changes);
        out.result(state, `${describeState(state)}\n\nRolled back. Run: pgferry cleanup --id ${state.id}`);
        return EXIT_CODES.ok;
      }
      case 'unfreeze': {
        const id = need(values.id, '--id', 'unfreeze');
        if (!values.yes)
          throw new InvalidInputError(
            'unfreeze makes the source writable without the target: writes made on the target that reverse replication had not brought over are not on it; pass --yes to accept that',
            { field: '--yes', hint: 'pgferry unfreeze --help says what is at risk' },
          );
        const state = await unfreezeMigration(rt, id);
        out.result(state, `${describeState(state)}\n\nThe source takes writes again. Point the application at it.`);
        return EXIT_CODES.ok;
      }
      case 'cleanup': {
        const state = await cleanupMigration(rt, need(values.id, '--id', 'cleanup'), {
          force: values.force,
          withoutTarget: values['without-target'],
        });
        out.result(state, describeState(state));
        return state.leftovers?.length ? EXIT_CODES.failed : EXIT_CODES.ok;
      }
      case 'demo': {
        const { runDemo } = await import('./demo');
        return await runDemo({
          targetVersion: demoVersion(int(values['target-version'], '--target-version') ?? 17),
          rows: int(values.rows, '--rows', { min: 1 }) ?? 20_000,
          out,
        });
      }
      case 'worker': {
        const task = workerTaskFromEnv(process.env);
        const seconds = int(process.env.PGFERRY_HEARTBEAT_SECONDS, 'PGFERRY_HEARTBEAT_SECONDS', { min: 1 }) ?? 30;
        // Deployed, the stack's table (named in the container's environment); else the local state dir.
        const store = (await deployedWorkerStore(process.env)) ?? rt.store;
        const dumpStore = await deployedWorkerDumpStore(process.env);
        const outcome = await runWorker(task, {
          rt: { ...rt, store, dumpStore },
          callbacks: await awsTaskCallbacks(),
          heartbeatMs: seconds * 1000,
          // Started by the state machine: no command holds the migration, each task leases it.
          lease: true,
          // Its execution gone, work that checks no signal is ended with the process (its sessions too).
          stopWithinMs: 30_000,
          exit: () => process.exit(EXIT_CODES.failed),
        });
        if (outcome.ok) out.log(outcome.output?.summary ?? 'done');
        else out.log(`${task.task} failed: ${outcome.error?.name}: ${outcome.error?.message}`);
        return outcome.ok ? EXIT_CODES.ok : EXIT_CODES.failed;
      }
      case 'plan':
        return await planCommand(
          subcommand,
          positionals,
          { table: values.table, region: values.region, stateDir },
          out,
        );
      case 'start':
        return await startCommand(
          positionals,
          {
            table: values.table,
            region: values.region,
            stateMachineArn: values['state-machine-arn'],
            requestedBy: values['requested-by'],
            id: values.id,
          },
          out,
        );
      case 'report': {
        const id = reportId(positionals, values.id);
        const file = writablePath(need(values.html, '--html', 'report'), '--html')!;
        // A deployed migration's record (--stage/--table), or the state directory's.
        const store = values.table
          ? await deployedTableStore(values.table, values.region, { table: '--table', region: '--region' })
          : rt.store;
        const state = await store.get(id);
        writeHtmlReport(file, state, await store.lagSeries?.(id));
        out.result({ id, html: file }, `report of ${id} written to ${file}`);
        return EXIT_CODES.ok;
      }
      default:
        throw new InvalidInputError(`unknown command "${command}"`, { hint: 'pgferry --help lists the commands' });
    }
  } catch (err) {
    // Broken by a signal: its handler reports and exits once the undo is done.
    if (wasInterrupted()) await new Promise(() => {});
    out.error(err);
    // By name too: the AWS adapters (loaded apart from the CLI's bundle) throw their own copy's classes.
    if (err instanceof PgferryError) return err.exitCode;
    const code = (err as { exitCode?: unknown } | undefined)?.exitCode;
    return Number.isInteger(code) && err instanceof Error ? (code as number) : EXIT_CODES.failed;
  }
}
