/** Shared test set-up: temporary directories, a config (mapfile, credential, vault) and the built CLI. */
import { spawnSync } from "node:child_process"
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..")
/** Built by `npm test` (npm run build, npm run build:sea) before vitest starts. */
export const bundle = join(repoRoot, "dist/op-secret-manager.js")
export const executable = join(repoRoot, "dist/op-secret-manager")

/** The two builds that must behave the same: the bundle on the machine's Node, the single executable. */
export interface Target {
  readonly name: string
  readonly command: string
  readonly prefix: ReadonlyArray<string>
}

export const targets: ReadonlyArray<Target> = [
  { name: "bundle", command: process.execPath, prefix: [bundle] },
  { name: "single executable", command: executable, prefix: [] }
]

export const tempDir = (prefix = "osm-test-"): { path: string; [Symbol.dispose]: () => void } => {
  const path = mkdtempSync(join(tmpdir(), prefix))
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) }
}

export interface Config {
  readonly dir: string
  readonly mapfile: string
  readonly api: string
  readonly vault: string
  readonly secrets: string
  /** The override flags that point the CLI at this config. */
  readonly args: Array<string>
}

/** Writes a mapfile, a vault file and a credential naming it, with the modes the tool requires. */
export const writeConfig = (dir: string, mapfile: string, vault: Record<string, string>): Config => {
  const paths = { mapfile: join(dir, "mapfile"), api: join(dir, "api"), vault: join(dir, "vault.json"), secrets: join(dir, "secrets") }
  writeFileSync(paths.mapfile, mapfile, { mode: 0o644 })
  chmodSync(paths.mapfile, 0o644)
  writeFileSync(paths.vault, JSON.stringify(vault), { mode: 0o600 })
  writeFileSync(paths.api, `file:${paths.vault}\n`, { mode: 0o600 })
  return {
    dir,
    ...paths,
    args: ["--map-file-path", paths.mapfile, "--api-key-path", paths.api, "--secrets-dir", paths.secrets]
  }
}

export interface RunResult {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  readonly timeout?: number
}

export const runCli = (args: ReadonlyArray<string>, options: RunOptions = {}, target: Target = targets[0]!): RunResult => {
  const result = spawnSync(target.command, [...target.prefix, ...args], {
    encoding: "utf8",
    env: options.env ?? { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    cwd: options.cwd ?? repoRoot,
    timeout: options.timeout ?? 20_000
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}
