// The CLI as `npm run build` bundled it (packages/cli/dist), which the load benchmark times. Not
// bin/pgferry.mjs: that one runs the TypeScript sources instead as soon as any source is newer than
// the bundle, so an edit made while a benchmark runs would change what it times (start-up 0.6 s
// instead of 0.2 s, seen in a run).
const { main } = await import('../packages/cli/dist/pgferry.mjs');
process.exitCode = await main(process.argv.slice(2));
