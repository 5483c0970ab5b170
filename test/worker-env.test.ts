/**
 * The worker's environment, from both ends: every variable a worker state of the definition sets is one
 * `pgferry worker` reads (one table, WORKER_ENV in packages/core), and what it sets is enough for the
 * worker to know its task. No database.
 */

import { TASK_NAMES, WORKER_ENV, workflowDefinition } from '@pgferry/core';
import { describe, expect, it } from 'vitest';
import { workerTaskFromEnv } from '../packages/cli/src/worker';

interface WorkerState {
  name: string;
  environment: { Name: string; Value?: string; 'Value.$'?: string }[];
}

/** Every ECS RunTask state, the scaled-out load's inside its Parallel and Map included. */
function workerStates(states: Record<string, unknown>, out: WorkerState[] = []): WorkerState[] {
  for (const [name, s] of Object.entries(states)) {
    const state = s as {
      Resource?: string;
      Parameters?: { Overrides?: { ContainerOverrides?: { Environment: WorkerState['environment'] }[] } };
      Branches?: { States: Record<string, unknown> }[];
      ItemProcessor?: { States: Record<string, unknown> };
    };
    if (state.Resource?.includes('ecs:runTask'))
      out.push({ name, environment: state.Parameters?.Overrides?.ContainerOverrides?.[0]?.Environment ?? [] });
    for (const b of state.Branches ?? []) workerStates(b.States, out);
    if (state.ItemProcessor) workerStates(state.ItemProcessor.States, out);
  }
  return out;
}

describe("the worker's environment", () => {
  const states = workerStates((workflowDefinition() as { States: Record<string, unknown> }).States);

  it('is set by the worker states with names the worker reads, and each state names a task it runs', () => {
    expect(states.length).toBeGreaterThan(3);
    const known = new Set<string>(Object.values(WORKER_ENV));
    for (const { name, environment } of states) {
      for (const v of environment)
        expect({
          state: name,
          variable: v.Name,
          known: known.has(v.Name) || v.Name.startsWith(WORKER_ENV.inputPrefix),
        }).toEqual({
          state: name,
          variable: v.Name,
          known: true,
        });
      // The values as the state machine would resolve them: a task name stays, a path gets a value.
      const env: Record<string, string> = {};
      for (const v of environment)
        env[v.Name] =
          v.Value ??
          (v.Name === WORKER_ENV.share
            ? '1'
            : v.Name.startsWith(WORKER_ENV.inputPrefix)
              ? '{"rounds":1}'
              : `x-${v.Name}`);
      const task = workerTaskFromEnv(env);
      expect(TASK_NAMES).toContain(task.task);
      expect(task.migrationId).toBe(`x-${WORKER_ENV.migrationId}`);
      expect(task.taskToken).toBe(`x-${WORKER_ENV.taskToken}`);
      if (task.task === 'copyShare')
        expect({ loadId: task.loadId, share: task.share }).toEqual({ loadId: `x-${WORKER_ENV.loadId}`, share: 1 });
    }
  });
});
