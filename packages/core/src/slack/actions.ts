/**
 * What `approve`, `rollback` and `abort` (typed, or a gate button) do to one migration, decided from its
 * stored state and its plan's approvers. Pure: packages/aws carries the decision out (the task token,
 * Step Functions), so that the rules read in one place and are tested without AWS.
 */
import { createHash } from 'node:crypto';
import type { MigrationState } from '../model';
import type { WorkflowInput } from '../workflow/definition';
import { workflowInput } from '../workflow/start-input';
import { authorizeSlack, type SlackAccess, type SlackActor } from './authorize';
import { escapeMrkdwn } from './text';

export type MigrationAction = 'approve' | 'rollback' | 'abort';

/**
 * What a plan's approvers may do to its migration from Slack: the actions above, and `resume`, which
 * starts the migration's next execution (packages/aws start.ts decides whether there is one to start).
 */
export type ApproverAction = MigrationAction | 'resume';

const APPROVER_VERBS: Record<ApproverAction, string> = {
  approve: 'approve',
  rollback: 'roll back',
  abort: 'abort',
  resume: 'resume',
};

/** The step of "Await cutover approval": its token is stored under this name (packages/postgres tasks). */
export const APPROVAL_STEP = 'awaitApproval';

export { CUTOVER_REJECTED_ERROR } from '../workflow/failure';

/**
 * The id of the migration a Slack `start` request begins: derived from the request (its signature, which
 * the replay cache accepts once), so a retried invocation of the same work finds the same migration.
 */
export function slackStartMigrationId(requestKey: string): string {
  return `s${createHash('sha256').update(requestKey).digest('hex').slice(0, 15)}`;
}

/**
 * The execution that `start` begins is named after the migration id; a rollback's after it: the first
 * `<id>-rollback`, and one asked for again after that one ended without rolling back (a server away)
 * `<id>-rollback-2`, `-3`…: Step Functions never reuses a name.
 */
export const migrateExecutionName = (migrationId: string) => migrationId;
export const rollbackExecutionName = (migrationId: string, attempt = 1) =>
  attempt === 1 ? `${migrationId}-rollback` : `${migrationId}-rollback-${attempt}`;
/** How many rollback executions of one migration Slack starts, each after the last one failed. */
export const MAX_ROLLBACK_ATTEMPTS = 10;

/** The input of an execution that goes straight to "Roll back" (no error: the rollback on request). */
export function rollbackExecutionInput(migrationId: string): WorkflowInput {
  return workflowInput({ migrationId, action: 'rollback', cutover: 'manual' });
}

/**
 * A migration's approvers: those of the plan it was started from. A migration started without a plan
 * (the CLI) has none beyond the configured Slack users and channels, who were checked already.
 */
export function authorizeForMigration(
  actor: SlackActor,
  state: Pick<MigrationState, 'id' | 'planName'>,
  plan: { approvers: SlackAccess } | undefined,
  action: ApproverAction,
): { allowed: true } | { allowed: false; message: string } {
  if (!state.planName) return { allowed: true };
  if (!plan)
    return {
      allowed: false,
      message: `Migration \`${escapeMrkdwn(state.id)}\` was started from plan \`${escapeMrkdwn(state.planName)}\`, which no longer exists, so nobody can ${APPROVER_VERBS[action]} it from Slack; nothing was changed. Use the pgferry CLI, or put the plan back.`,
    };
  const allowed = authorizeSlack(actor, plan.approvers, action);
  if (allowed.allowed) return { allowed: true };
  const plan$ = `\`${escapeMrkdwn(state.planName)}\``;
  return {
    allowed: false,
    message: `Sorry <@${escapeMrkdwn(actor.userId)}>, you are not an approver of plan ${plan$}, so nothing was changed. Only the approvers of plan ${plan$} may act on \`${escapeMrkdwn(state.id)}\`; pgferry reads them from the plan when the click or command arrives, so ask one of them, or whoever manages the plan to add you (\`pgferry plan put\`).`,
  };
}

export type ActionStep =
  /** Take the approval token and complete it with success: the cutover goes ahead. */
  | { step: 'approve' }
  /** Take the approval token and fail it with CUTOVER_REJECTED_ERROR: the workflow rolls back. */
  | { step: 'reject-at-gate' }
  /** Stop the migrate execution (it may be baking), then start the rollback execution. */
  | { step: 'stop-then-roll-back' }
  | { step: 'refuse'; message: string };

const statusWords = (s: MigrationState) => `${s.status}, phase ${s.phase}`;

/** What `action` does to the migration as stored now. */
export function actionStep(action: MigrationAction, state: MigrationState): ActionStep {
  const id = `\`${escapeMrkdwn(state.id)}\``;
  const switchStarted = !!state.cutover?.switchStartedAt;
  const switched = !!state.cutover?.switchAt;
  if (switchStarted && !switched)
    return {
      step: 'refuse',
      message: `${id} stopped while switching its connection; nothing was changed. Run \`pgferry status ${escapeMrkdwn(state.id)}\`: it names what is left and the command that ends it.`,
    };
  if (state.status === 'rolled-back' || state.status === 'cleaned-up' || state.status === 'failed')
    return { step: 'refuse', message: `${id} is ${state.status} already; nothing was changed.` };
  switch (action) {
    case 'approve':
      if (state.status === 'awaiting-cutover') return { step: 'approve' };
      return {
        step: 'refuse',
        message: `${id} is not waiting for cutover approval (${statusWords(state)}); nothing was changed.`,
      };
    case 'rollback':
      if (state.status === 'awaiting-cutover') return { step: 'reject-at-gate' };
      // After the switch reverse replication keeps the source current until clean-up: the way back loses nothing.
      if (switched && state.phase !== 'cleanup') return { step: 'stop-then-roll-back' };
      if (switched)
        return { step: 'refuse', message: `${id} is being cleaned up: there is no way back; nothing was changed.` };
      return {
        step: 'refuse',
        message: `${id} is not at the cutover gate yet (${statusWords(state)}): \`/pgferry abort ${escapeMrkdwn(state.id)}\` stops it and removes what it made. Nothing was changed.`,
      };
    case 'abort':
      if (switched)
        return {
          step: 'refuse',
          message: `${id} is cut over already: \`/pgferry rollback ${escapeMrkdwn(state.id)}\` switches back to the source. Nothing was changed.`,
        };
      if (state.status === 'running' || state.status === 'awaiting-cutover') return { step: 'stop-then-roll-back' };
      return { step: 'refuse', message: `${id} has nothing to abort (${statusWords(state)}); nothing was changed.` };
  }
}
