/**
 * install, doctor and check on a real host, as root: a single executable built for a config
 * directory that does not exist yet, installed by its own `install`, audited by `doctor`, and
 * broken on purpose to prove that doctor names each misconfiguration with its fix.
 */
import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../fixtures.ts"
import { isRoot } from "./installation.ts"

const TIMEOUT = 60_000
const prefix = "osm" + Array.from(randomBytes(5), (b) => String.fromCharCode(97 + (b % 26))).join("")
const svc = `${prefix}op`
const alice = `${prefix}alice`

const sh = (command: string, args: ReadonlyArray<string>) => spawnSync(command, args, { encoding: "utf8", timeout: TIMEOUT })
const id = (flag: "-u" | "-g", user: string) => Number(sh("id", [flag, user]).stdout.trim())

describe.skipIf(!isRoot)("install, doctor and check on a real host", () => {
  let tmp: string, etc: string, built: string, installed: string

  const run = (binary: string, args: ReadonlyArray<string>, as?: string) => {
    const argv = as === undefined ? [binary, ...args] : ["/usr/bin/setpriv", "--reuid", String(id("-u", as)), "--regid", String(id("-g", as)), "--clear-groups", "--", binary, ...args]
    const result = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", cwd: tmp, env: { PATH: "/usr/bin:/bin:/usr/sbin:/sbin" }, timeout: TIMEOUT })
    return { status: result.status, stdout: result.stdout, stderr: result.stderr }
  }

  beforeAll(async () => {
    tmp = mkdtempSync("/tmp/osm-operator-")
    chmodSync(tmp, 0o755)
    etc = join(tmp, "etc", "op-secret-manager")
    installed = join(tmp, "prefix", "bin", "op-secret-manager")
    const { buildSea } = (await import(pathToFileURL(join(repoRoot, "scripts/build.mjs")).href)) as {
      buildSea: (options: { sysconfdir: string; outdir: string }) => Promise<string>
    }
    built = await buildSea({ sysconfdir: etc, outdir: join(tmp, "build") })
    chmodSync(join(tmp, "build"), 0o755)
    expect(sh("useradd", ["-M", "-s", "/bin/sh", alice]).status).toBe(0)
  }, 180_000)

  afterAll(() => {
    for (const user of [alice, svc]) {
      sh("userdel", [user])
      sh("groupdel", [user])
    }
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true })
  })

  it("refuses install for anyone but root (exit 77)", () => {
    const result = run(built, ["install", "--prefix", join(tmp, "prefix"), "--service-user", svc], alice)
    expect(result.status).toBe(77)
    expect(result.stderr).toContain("install must be run by root")
  }, TIMEOUT)

  it("--dry-run prints every step and changes nothing", () => {
    const result = run(built, ["install", "--prefix", join(tmp, "prefix"), "--service-user", svc, "--dry-run"])
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout.split("\n").filter((l) => l.startsWith("would change")).length).toBe(5)
    expect(result.stdout).toContain("dry run: nothing was changed")
    expect(sh("id", [svc]).status).not.toBe(0)
    expect(existsSync(etc)).toBe(false)
    expect(existsSync(installed)).toBe(false)
  }, TIMEOUT)

  it("installs the service account, the set-user-ID executable and the config files", () => {
    const result = run(built, ["install", "--prefix", join(tmp, "prefix"), "--service-user", svc])
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout.trim().split("\n").at(-1)).toBe("installed")
    const account = sh("getent", ["passwd", svc]).stdout.trim().split(":")
    expect(account[6]).toBe("/usr/sbin/nologin")
    expect(Number(account[2])).toBeLessThan(1000)
    expect(sh("id", ["-Gn", svc]).stdout.trim()).toBe(svc)
    const uid = id("-u", svc), gid = id("-g", svc)
    const mode = (path: string) => statSync(path).mode & 0o7777
    expect([statSync(installed).uid, statSync(installed).gid, mode(installed)]).toEqual([uid, gid, 0o6755])
    expect([statSync(etc).uid, mode(etc)]).toEqual([0, 0o755])
    expect([statSync(join(etc, "api")).uid, mode(join(etc, "api")), statSync(join(etc, "api")).size]).toEqual([uid, 0o600, 0])
    expect([statSync(join(etc, "mapfile")).uid, statSync(join(etc, "mapfile")).gid, mode(join(etc, "mapfile"))]).toEqual([0, gid, 0o640])
    expect(readFileSync(join(etc, "mapfile"), "utf8")).toMatch(/^# op-secret-manager mapfile/)
  }, TIMEOUT)

  it("changes nothing when run again, and keeps the credential and the mapfile", () => {
    writeFileSync(join(etc, "vault.json"), JSON.stringify({ "op://V/alice/password": "alice-operator-secret" }), { mode: 0o600 })
    chownSync(join(etc, "vault.json"), id("-u", svc), id("-g", svc))
    writeFileSync(join(etc, "api"), `file:${join(etc, "vault.json")}\n`)
    writeFileSync(join(etc, "mapfile"), `${alice} op://V/alice/password secret\n`)
    const result = run(installed, ["install", "--prefix", join(tmp, "prefix"), "--service-user", svc])
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout).toContain("nothing to change: already installed")
    expect(readFileSync(join(etc, "api"), "utf8")).toContain("file:")
    expect(readFileSync(join(etc, "mapfile"), "utf8")).toContain(alice)
  }, TIMEOUT)

  it("serves a user through the installed executable, and doctor finds nothing wrong", () => {
    const home = join(tmp, "alice")
    sh("install", ["-d", "-o", alice, "-g", alice, "-m", "0700", home])
    const fetch = run(installed, ["--secrets-dir", join(home, "secrets")], alice)
    expect(fetch.status, fetch.stderr).toBe(0)
    expect(readFileSync(join(home, "secrets", "secret"), "utf8")).toBe("alice-operator-secret")
    const doctor = run(installed, ["doctor", "--json"])
    expect(doctor.status, doctor.stdout + doctor.stderr).toBe(0)
    const checks: Array<{ check: string; status: string }> = JSON.parse(doctor.stdout).checks
    expect(checks.filter((c) => c.status === "fail")).toEqual([])
    expect(checks.map((c) => c.check)).toEqual(expect.arrayContaining(["executable", "filesystem", "service account", "config directory", "credential file", "mapfile", `user ${alice}`]))
    const asAlice = run(installed, ["doctor"], alice)
    expect(asAlice.status, asAlice.stdout).toBe(0)
    expect(asAlice.stdout).toContain("run doctor as root to check its content")
    expect(asAlice.stdout).not.toContain("alice-operator-secret")
  }, TIMEOUT)

  it("doctor names each misconfiguration with the command that fixes it (exit 78)", () => {
    const cases: Array<{ name: string; breakIt: () => void; restore: () => void; expected: RegExp }> = [
      { name: "credential readable by others", breakIt: () => chmodSync(join(etc, "api"), 0o644), restore: () => chmodSync(join(etc, "api"), 0o600), expected: /fail\s+credential file: .*fix: chown .* && chmod 600/ },
      { name: "credential owned by a user", breakIt: () => chownSync(join(etc, "api"), id("-u", alice), id("-g", alice)), restore: () => chownSync(join(etc, "api"), id("-u", svc), id("-g", svc)), expected: /fail\s+credential file: .*uid/ },
      { name: "empty credential", breakIt: () => writeFileSync(join(etc, "api"), ""), restore: () => writeFileSync(join(etc, "api"), `file:${join(etc, "vault.json")}\n`), expected: /fail\s+credential file: .* is empty/ },
      { name: "malformed token", breakIt: () => writeFileSync(join(etc, "api"), "ops_garbage\n"), restore: () => writeFileSync(join(etc, "api"), `file:${join(etc, "vault.json")}\n`), expected: /fail\s+credential file: the token is not well-formed/ },
      { name: "mapfile writable by the group", breakIt: () => chmodSync(join(etc, "mapfile"), 0o660), restore: () => chmodSync(join(etc, "mapfile"), 0o640), expected: /fail\s+mapfile: .*fix: chown root:.* && chmod 640/ },
      { name: "mapfile with errors", breakIt: () => writeFileSync(join(etc, "mapfile"), `${alice} op://V/alice/password ../up\n`), restore: () => writeFileSync(join(etc, "mapfile"), `${alice} op://V/alice/password secret\n`), expected: /fail\s+mapfile: 1 errors.*fix: op-secret-manager check/ },
      { name: "executable without set-user-ID", breakIt: () => chmodSync(installed, 0o755), restore: () => chmodSync(installed, 0o6755), expected: /fail\s+executable: .*mode 0755.*fix: chown .* && chmod 6755/ },
      { name: "config directory writable by others", breakIt: () => chmodSync(etc, 0o777), restore: () => chmodSync(etc, 0o755), expected: /fail\s+config directory: .*fix: chown root:root .* && chmod 755/ }
    ]
    for (const { name, breakIt, restore, expected } of cases) {
      breakIt()
      try {
        const result = run(installed, ["doctor"])
        expect(result.status, name).toBe(78)
        expect(result.stdout, name).toMatch(expected)
      } finally {
        restore()
      }
    }
    expect(run(installed, ["doctor"]).status).toBe(0)
  }, TIMEOUT)

  it("check shows a user only their own lines, refuses their own mapfile, and lets root check any file", () => {
    writeFileSync(join(etc, "mapfile"), `${alice} op://V/alice/password secret\nroot bad-reference x\n`)
    const asAlice = run(installed, ["check"], alice)
    expect(asAlice.status, asAlice.stdout + asAlice.stderr).toBe(0)
    expect(asAlice.stdout).toContain("1 findings about other users' lines not shown")
    expect(asAlice.stdout).not.toContain("bad-reference")
    const own = join(tmp, "alice", "mapfile")
    writeFileSync(own, "anything\n")
    expect(run(installed, ["check", "--map-file-path", own], alice).status).toBe(77)
    const asRoot = run(installed, ["check", "--map-file-path", own])
    expect(asRoot.status, asRoot.stderr).toBe(65)
    expect(asRoot.stdout).toContain("line 1: expected 3 or 4 fields, found 1")
    const installedAsRoot = run(installed, ["check"])
    expect(installedAsRoot.status).toBe(65)
    expect(installedAsRoot.stdout).toContain("bad-reference")
    writeFileSync(join(etc, "mapfile"), `${alice} op://V/alice/password secret\n`)
  }, TIMEOUT)
})
