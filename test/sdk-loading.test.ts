/**
 * The 1Password SDK (14 MB of WASM) is loaded only on the path that resolves secrets: never for
 * --version, --help or cleanup. A module-resolution hook records every import of it.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { userInfo } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { type Config, runCli, tempDir, writeConfig } from "./fixtures.ts"

let dir: ReturnType<typeof tempDir>
let config: Config
let marker: string
let env: NodeJS.ProcessEnv

beforeEach(() => {
  dir = tempDir()
  config = writeConfig(dir.path, `${userInfo().username} op://Vault/db/password db_password\n`, {})
  writeFileSync(config.api, "ops_not-a-real-token\n", { mode: 0o600 })
  marker = join(dir.path, "sdk-loaded")
  const hooks = join(dir.path, "hooks.mjs")
  writeFileSync(hooks, [
    "import { appendFileSync } from 'node:fs'",
    "export async function resolve(specifier, context, next) {",
    `  if (specifier.includes('@1password/sdk')) appendFileSync(${JSON.stringify(marker)}, specifier + '\\n')`,
    "  return next(specifier, context)",
    "}"
  ].join("\n"))
  const register = join(dir.path, "register.mjs")
  writeFileSync(register, `import { register } from 'node:module'\nregister(${JSON.stringify(pathToFileURL(hooks).href)})\n`)
  env = { PATH: process.env.PATH ?? "", NODE_OPTIONS: `--import ${pathToFileURL(register).href}` }
})
afterEach(() => dir[Symbol.dispose]())

describe("lazy SDK", () => {
  it("is not loaded by --version, --help or cleanup", () => {
    expect(runCli(["--version"], { env }).status).toBe(0)
    expect(runCli(["--help"], { env }).status).toBe(0)
    expect(runCli([...config.args, "--cleanup"], { env }).status).toBe(0)
    expect(existsSync(marker)).toBe(false)
  })

  it("is loaded when a fetch resolves secrets through a service account", () => {
    const result = runCli(config.args, { env, timeout: 60_000 })
    expect(result.status).toBe(78)
    expect(readFileSync(marker, "utf8")).toContain("@1password/sdk")
  })
})
