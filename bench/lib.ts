import { spawn } from 'node:child_process';

/** Run a command to completion, collecting stdout and stderr together. */
export function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env } });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      out += d;
    });
    child.on('close', (code) => resolve({ code: code ?? 1, out }));
  });
}

/** Like run, but a non-zero exit is an error carrying the output's tail. */
export async function runOk(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await run(cmd, args, env);
  if (r.code !== 0) throw new Error(`${cmd} exited ${r.code}: ${r.out.slice(-2000)}`);
  return r.out;
}
