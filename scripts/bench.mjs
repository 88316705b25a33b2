// npm run bench: builds both targets, bundles bench/bench.ts and runs it on the machine's Node.
import { build } from "esbuild"
import { spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { buildBundle, buildSea } from "./build.mjs"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
await buildBundle()
await buildSea()
const out = mkdtempSync(join(tmpdir(), "osm-bench-build-"))
try {
  const bench = join(root, "bench/.bench.mjs")
  await build({
    entryPoints: [join(root, "bench/bench.ts")],
    outfile: bench,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    logLevel: "warning"
  })
  const result = spawnSync(process.execPath, [bench], { stdio: "inherit", cwd: root })
  rmSync(bench, { force: true })
  process.exitCode = result.status ?? 1
} finally {
  rmSync(out, { recursive: true, force: true })
}
