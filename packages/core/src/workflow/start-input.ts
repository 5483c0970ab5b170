/**
 * The one place an execution's input is built, for the CLI's local runtime and for a start in AWS
 * (packages/aws startFromPlan) alike: what the definition's "Start" state reads, and nothing else.
 */
import type { MigrationConfig } from '../config';
import type { WorkflowInput } from './definition';

export interface WorkflowInputOptions {
  migrationId: string;
  action?: WorkflowInput['action'];
  cutover?: WorkflowInput['cutover'];
  approved?: boolean;
  provisionTarget?: boolean;
  cleanup?: boolean;
  bakeSeconds?: number;
  copyWorkers?: number;
}

/** Defaults: migrate, automatic cutover, nothing approved, provisioned or cleaned up, one copy worker. */
export function workflowInput(options: WorkflowInputOptions): WorkflowInput {
  return {
    migrationId: options.migrationId,
    action: options.action ?? 'migrate',
    cutover: options.cutover ?? 'auto',
    approved: options.approved ?? false,
    provisionTarget: options.provisionTarget ?? false,
    cleanup: options.cleanup ?? false,
    bakeSeconds: options.bakeSeconds ?? 0,
    copyWorkers: options.copyWorkers ?? 1,
    execution: 0,
    continued: null,
  };
}

/**
 * The input of a stored migration's first execution in AWS: its cutover policy and copy workers from
 * its config, "Provision target" when its config names a new instance to create, and the automatic
 * clean-up after "Bake" (which waits `bakeSeconds`) when its plan asked for one.
 */
export function workflowInputForConfig(config: MigrationConfig): WorkflowInput {
  return workflowInput({
    migrationId: config.id,
    cutover: config.cutover,
    provisionTarget: config.target !== undefined,
    copyWorkers: config.copyWorkers,
    ...(config.autoCleanup ? { cleanup: true, bakeSeconds: config.autoCleanup.bakeSeconds } : {}),
  });
}
