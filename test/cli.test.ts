/**
 * Black-box tests of both builds (the bundle on the machine's Node and the single executable), run
 * as a user would run them: not elevated, so the path overrides are honoured, with the vault file.
 */
import { spawn } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { userInfo } from "node:os"
import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { type Config, runCli as runTarget, type RunOptions, targets, tempDir, writeConfig } from "./fixtures.ts"

const me = userInfo().username
const isRoot = process.getuid?.() === 0

const vault = {
  "op://Vault/db/password": "s3cret-db-value",
  "op://Vault/api/token": "s3cret-api-value",
  "op://Vault/other/password": "s3cret-other-user-value"
}
const values = Object.values(vault)

const mapfile = [
  "# demo",
  `${me} op://Vault/db/password db/password db`,
  `${me} op://Vault/api/token api_token web`,
  "someoneelse op://Vault/other/password other",
  "someoneelse this line is broken"
].join("\n")

let dir: ReturnType<typeof tempDir>
let config: Config

beforeEach(() => {
  dir = tempDir()
  config = writeConfig(dir.path, mapfile, vault)
})
afterEach(() => dir[Symbol.dispose]())

const expectNoSecretIn = (...outputs: Array<string>) => {
  for (const output of outputs) for (const value of values) expect(output).not.toContain(value)
}

const filesUnder = (path: string): Array<string> =>
  existsSync(path) ? readdirSync(path, { recursive: true, encoding: "utf8" }).sort() : []

describe.each(targets)("$name", (target) => {
  const runCli = (args: ReadonlyArray<string>, options: RunOptions = {}) => runTarget(args, options, target)

  describe("fetch", () => {
    it("writes the caller's secrets with mode 0600 and says so without printing values (exit 0)", () => {
      const result = runCli([...config.args, "-v"])
      expect(result.status).toBe(0)
      expect(readFileSync(join(config.secrets, "db/password"), "utf8")).toBe("s3cret-db-value")
      expect(statSync(join(config.secrets, "db/password")).mode & 0o777).toBe(0o600)
      expect(statSync(join(config.secrets, "db")).mode & 0o777).toBe(0o700)
      expect(result.stdout).toContain(`Successfully wrote secret to ${join(config.secrets, "api_token")}`)
      expect(result.stderr).toMatch(/1 malformed lines of other users skipped/)
      expect(result.stderr).not.toContain("this line is broken")
      expectNoSecretIn(result.stdout, result.stderr)
      expect(filesUnder(config.secrets)).toEqual(["api_token", "db", "db/password"])
    })

    it("reports unchanged files on a second run and describes the run as JSON", () => {
      expect(runCli(config.args).status).toBe(0)
      const result = runCli([...config.args, "--json"])
      expect(result.status).toBe(0)
      const report = JSON.parse(result.stdout)
      expect(report).toMatchObject({ ok: true, command: "fetch", user: me })
      expect(report.files.map((f: { status: string }) => f.status)).toEqual(["unchanged", "unchanged"])
      expectNoSecretIn(result.stdout, result.stderr)
    })

    it("accepts the subcommand form, Go-style single-dash flags and the environment", () => {
      expect(runCli(["fetch", ...config.args, "--tags", "web"]).status).toBe(0)
      expect(filesUnder(config.secrets)).toEqual(["api_token"])
      const env = { PATH: process.env.PATH ?? "", OP_MAP_FILE_PATH: config.mapfile, OP_API_KEY_PATH: config.api, OP_TAGS: "db" }
      expect(runCli(["-secrets-dir", config.secrets], { env }).status).toBe(0)
      expect(filesUnder(config.secrets)).toEqual(["api_token", "db", "db/password"])
    })

    it("warns and exits 0 when the tags select nothing", () => {
      const result = runCli([...config.args, "--tags", "nothing-has-this"])
      expect(result.status).toBe(0)
      expect(result.stderr).toMatch(/warning: the tag selection matches none/)
      expect(filesUnder(config.secrets)).toEqual([])
    })

    it("prints the version line of the original tool", () => {
      const result = runCli(["--version"])
      expect(result.status).toBe(0)
      expect(result.stdout).toMatch(/^op-secret-manager \d+\.\d+\.\d+\n$/)
    })
  })

  describe("exit codes", () => {
    it("64 for a usage error", () => {
      expect(runCli(["--no-such-flag"]).status).toBe(64)
    })

    it("65 for the caller's malformed line, naming it, with nothing written", () => {
      writeFileSync(config.mapfile, `${mapfile}\n${me} "op://Vault/db/password db/x`)
      const result = runCli(config.args)
      expect(result.status).toBe(65)
      expect(result.stderr).toMatch(/line 6: unterminated quoted field/)
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
      expect(filesUnder(config.secrets)).toEqual([])
    })

    it("66 when the mapfile or the credential file is missing", () => {
      const noMap = runCli(["--map-file-path", join(dir.path, "nope"), "--api-key-path", config.api])
      expect(noMap.status).toBe(66)
      expect(noMap.stderr).toMatch(/mapfile .*nope does not exist/)
      expect(runCli(["--map-file-path", config.mapfile, "--api-key-path", join(dir.path, "nope")]).status).toBe(66)
    })

    it("69 naming every reference that did not resolve, with the old files kept", () => {
      expect(runCli(config.args).status).toBe(0)
      writeFileSync(config.vault, JSON.stringify({ "op://Vault/db/password": "new-value" }))
      const result = runCli([...config.args, "--json"])
      expect(result.status).toBe(69)
      expect(result.stderr).toMatch(/op:\/\/Vault\/api\/token \(not found in the vault file\)/)
      expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, error: { code: 69 }, files: [{ reference: "op://Vault/api/token", status: "failed" }] })
      expect(readFileSync(join(config.secrets, "db/password"), "utf8")).toBe("s3cret-db-value")
    })

    it("73 when a target cannot be written, with every other target left as it was", () => {
      expect(runCli(config.args).status).toBe(0)
      writeFileSync(config.vault, JSON.stringify({ ...vault, "op://Vault/db/password": "changed" }))
      mkdirSync(join(config.secrets, "api_token.d"))
      writeFileSync(config.mapfile, `${mapfile}\n${me} op://Vault/api/token api_token.d`)
      const result = runCli(config.args)
      expect(result.status).toBe(73)
      expect(result.stderr).toMatch(/api_token\.d: is a directory/)
      expect(readFileSync(join(config.secrets, "db/password"), "utf8")).toBe("s3cret-db-value")
      expect(filesUnder(config.secrets).filter((f) => f.includes(".op-secret-manager."))).toEqual([])
    })

    it("75 when --serialize cannot get the lock in time", async () => {
      mkdirSync(config.secrets)
      const holder = spawn("flock", [join(dir.path, "op-secret-manager.lock"), "sleep", "30"], { stdio: "ignore" })
      try {
        await new Promise((resolve) => setTimeout(resolve, 300))
        const result = runCli([...config.args, "--serialize", "--lock-timeout", "1"])
        expect(result.status).toBe(75)
        expect(result.stderr).toMatch(/gave up waiting for .*op-secret-manager\.lock/)
        expect(filesUnder(config.secrets)).toEqual([])
      } finally {
        holder.kill()
      }
    })

    it("77 when the caller has no line in the mapfile", () => {
      writeFileSync(config.mapfile, "someoneelse op://Vault/other/password other\n")
      const result = runCli(config.args)
      expect(result.status).toBe(77)
      expect(result.stderr).toMatch(new RegExp(`user ${me} has no entries`))
    })

    it.runIf(isRoot)("77 for root when the mapfile is writable by others (the root rule)", () => {
      chmodSync(config.mapfile, 0o664)
      const result = runCli(config.args)
      expect(result.status).toBe(77)
      expect(result.stderr).toMatch(/refusing to run for root: .*writable by group or others/)
    })

    it("78 when the credential file is readable by others, with the fix in the message", () => {
      chmodSync(config.api, 0o644)
      const result = runCli(config.args)
      expect(result.status).toBe(78)
      expect(result.stderr).toContain(`chmod 600 ${config.api}`)
    })

    it("78 when the real 1Password SDK rejects the token, without printing it", () => {
      writeFileSync(config.api, "ops_this-is-not-a-token-SECRETPART\n")
      const result = runCli(config.args, { timeout: 60_000 })
      expect(result.status).toBe(78)
      expect(result.stderr).toMatch(/service account token .* was rejected/)
      expect(result.stderr + result.stdout).not.toContain("SECRETPART")
    })

    it.each([["SIGTERM", 143], ["SIGINT", 130]] as const)("%s while waiting exits %i, with nothing written", async (signal, expected) => {
      mkdirSync(config.secrets)
      const holder = spawn("flock", [join(dir.path, "op-secret-manager.lock"), "sleep", "30"], { stdio: "ignore" })
      try {
        await new Promise((resolve) => setTimeout(resolve, 300))
        const child = spawn(target.command, [...target.prefix, ...config.args, "--serialize"], { stdio: "ignore" })
        await new Promise((resolve) => setTimeout(resolve, 1500))
        child.kill(signal)
        const code = await new Promise((resolve) => child.on("exit", (status) => resolve(status)))
        expect(code).toBe(expected)
        expect(filesUnder(config.secrets)).toEqual([])
      } finally {
        holder.kill()
      }
    })
  })

  describe("cleanup", () => {
    it("removes only the caller's selected files and is idempotent", () => {
      expect(runCli(config.args).status).toBe(0)
      writeFileSync(join(config.secrets, "unrelated"), "keep me")
      const first = runCli(["cleanup", ...config.args, "--tags", "db"])
      expect(first.status).toBe(0)
      expect(filesUnder(config.secrets)).toEqual(["api_token", "db", "unrelated"])
      const second = runCli([...config.args, "--cleanup"])
      expect(second.status).toBe(0)
      expect(second.stdout).toContain("Cleanup completed successfully")
      expect(filesUnder(config.secrets)).toEqual(["db", "unrelated"])
      expect(runCli([...config.args, "--cleanup"]).status).toBe(0)
    })

    it("never loads the 1Password SDK, which fetch with a token does", () => {
      writeFileSync(config.api, "ops_not-a-token\n", { mode: 0o600 })
      const cleanup = runCli([...config.args, "--cleanup", "-v"])
      expect(cleanup.status).toBe(0)
      expect(cleanup.stderr).not.toContain("loading the 1Password SDK")
      const fetch = runCli([...config.args, "-v"], { timeout: 60_000 })
      expect(fetch.status).toBe(78)
      expect(fetch.stderr).toContain("loading the 1Password SDK")
    })

    it("needs no credential file at all", () => {
      expect(runCli(config.args).status).toBe(0)
      const result = runCli(["--cleanup", "--map-file-path", config.mapfile, "--api-key-path", join(dir.path, "absent"), "--secrets-dir", config.secrets])
      expect(result.status).toBe(0)
      expect(filesUnder(config.secrets)).toEqual(["db"])
    })
  })
})
