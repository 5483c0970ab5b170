/**
 * The bulk load's part of the state machine. For now one "Bulk load" worker task; the scale-out
 * (a Map state over N workers sharing the coordinator's exported snapshot) replaces this file.
 */
import { workerTaskState } from './states';

/** The bulk load's states, entered at WORKFLOW_TASKS.bulkLoad.state; `next` follows it, `onError` takes its failures. */
export function bulkLoadStates(next: string, onError: string): Record<string, object> {
  return { 'Bulk load': workerTaskState('bulkLoad', { next, onError }) };
}
