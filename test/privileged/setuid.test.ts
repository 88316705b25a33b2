/**
 * The set-user-ID contract (DESIGN.md section 1), run for real as root: throwaway users, a bundle
 * built for a temporary config directory, and `setpriv` to create exactly the credentials a
 * set-user-ID exec creates (real = caller, effective = service account; execve copies the
 * effective ids into the saved ids and sets AT_SECURE, as for a set-user-ID binary).
 */
import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../fixtures.ts"

const SETPRIV = "/usr/bin/setpriv"
const RUN_TIMEOUT = 30_000
const TEST_TIMEOUT = 60_000

interface Account {
  readonly name: string
  readonly uid: number
  readonly gid: number
}

interface Result {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

const sh = (command: string, args: ReadonlyArray<string>): string => {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: RUN_TIMEOUT })
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${result.status}): ${result.stderr}`)
  return result.stdout.trim()
}

const prefix = "osm" + Array.from(randomBytes(6), (b) => String.fromCharCode(97 + (b % 26))).join("")
const value = () => randomBytes(16).toString("hex")
const secret = { alice: value(), aliceTagged: value(), bob: value(), root: value() }
const ref = {
  alice: "op://Vault/alice-db/password",
  aliceTagged: "op://Vault/alice-api/token",
  bob: "op://Vault/bob-db/password",
  root: "op://Vault/root/password"
}

/** Everything the suite creates, so that cleanup can undo exactly that, even after a partial set-up. */
const created = { users: [] as Array<string>, paths: [] as Array<string> }

const cleanup = () => {
  for (const name of created.users.splice(0).reverse()) {
    spawnSync("userdel", [name], { timeout: RUN_TIMEOUT })
    spawnSync("groupdel", [name], { timeout: RUN_TIMEOUT }) // normally already gone with the user
  }
  for (const path of created.paths.splice(0).reverse()) rmSync(path, { recursive: true, force: true })
}

const addUser = (suffix: string, system: boolean): Account => {
  const name = prefix + suffix
  created.users.push(name)
  sh("useradd", system ? ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name] : ["-M", "-s", "/bin/sh", name])
  return { name, uid: Number(sh("id", ["-u", name])), gid: Number(sh("id", ["-g", name])) }
}

const writeOwned = (path: string, content: string, uid: number, gid: number, mode: number) => {
  writeFileSync(path, content, { mode })
  chownSync(path, uid, gid)
  chmodSync(path, mode)
}

/** Every regular file under `dir` (recursively), or [] when `dir` does not exist. */
const filesUnder = (dir: string): Array<string> =>
  existsSync(dir)
    ? readdirSync(dir, { recursive: true, encoding: "utf8" }).map((f) => join(dir, f)).filter((f) => statSync(f).isFile())
    : []

describe.skipIf(process.getuid?.() !== 0)("set-user-ID run (as root, through setpriv)", () => {
  let tmp: string, etc: string, bundle: string
  let svc: Account, alice: Account, bob: Account, carol: Account
  const home = (user: Account) => join(tmp, "home", user.name)
  const secretsOf = (user: Account) => join(home(user), "secrets")
  const runUser = () => join("/run/user", String(alice.uid))

  /** Runs the bundle with the credentials a set-user-ID exec gives `caller`; never prints a secret. */
  const runAs = (caller: { uid: number; gid: number }, args: ReadonlyArray<string>, env: Record<string, string> = {}): Result => {
    const ids = ["--ruid", caller.uid, "--euid", svc.uid, "--rgid", caller.gid, "--egid", svc.gid].map(String)
    const result = spawnSync(SETPRIV, [...ids, "--clear-groups", "--", process.execPath, bundle, ...args], {
      encoding: "utf8",
      cwd: tmp,
      env: { PATH: "/usr/bin:/bin", ...env },
      timeout: RUN_TIMEOUT
    })
    const output = result.stdout + result.stderr
    for (const [name, v] of Object.entries(secret)) expect(output, `output leaks ${name}'s secret`).not.toContain(v)
    return { status: result.status, stdout: result.stdout, stderr: result.stderr }
  }
  const fetchAs = (user: Account, ...extra: Array<string>) => runAs(user, ["--secrets-dir", secretsOf(user), ...extra])

  beforeAll(async () => {
    if (!existsSync(SETPRIV)) throw new Error(`${SETPRIV} is missing: install util-linux (it provides setpriv)`)
    try {
      tmp = mkdtempSync("/tmp/osm-setuid-")
      created.paths.push(tmp)
      chmodSync(tmp, 0o755)
      svc = addUser("svc", true)
      alice = addUser("alice", false)
      bob = addUser("bob", false)
      carol = addUser("carol", false)

      etc = join(tmp, "etc")
      mkdirSync(etc, { mode: 0o755 })
      const vault = { [ref.alice]: secret.alice, [ref.aliceTagged]: secret.aliceTagged, [ref.bob]: secret.bob, [ref.root]: secret.root }
      writeOwned(join(etc, "vault.json"), JSON.stringify(vault), svc.uid, svc.gid, 0o600)
      writeOwned(join(etc, "api"), `file:${join(etc, "vault.json")}\n`, svc.uid, svc.gid, 0o600)
      const mapfile = [
        `${alice.name} ${ref.alice} db_password`,
        `${alice.name} ${ref.aliceTagged} api/token web`,
        `${bob.name} ${ref.bob} db_password`,
        `root ${ref.root} ${join(tmp, "rootout", "secret")}`
      ].join("\n") + "\n"
      writeOwned(join(etc, "mapfile"), mapfile, 0, svc.gid, 0o640)

      // 0700: the service account cannot even search a caller's home; nothing of the caller's is
      // touched before the drop (see the --secrets-dir test below).
      mkdirSync(join(tmp, "home"), { mode: 0o755 })
      for (const user of [alice, bob, carol]) {
        mkdirSync(home(user), { mode: 0o700 })
        chmodSync(home(user), 0o700)
        chownSync(home(user), user.uid, user.gid)
      }

      const dist = join(tmp, "dist")
      const { buildBundle } = (await import(pathToFileURL(join(repoRoot, "scripts/build.mjs")).href)) as {
        buildBundle: (options: { sysconfdir: string; outdir: string }) => Promise<string>
      }
      bundle = await buildBundle({ sysconfdir: etc, outdir: dist })
    } catch (error) {
      cleanup()
      throw error
    }
  })

  afterAll(cleanup)

  it("setpriv gives the child a set-user-ID exec's credentials (real caller; effective and saved service account)", () => {
    const ids = ["--ruid", alice.uid, "--euid", svc.uid, "--rgid", alice.gid, "--egid", svc.gid].map(String)
    const status = sh(SETPRIV, [...ids, "--clear-groups", "--", "/bin/cat", "/proc/self/status"])
    expect(status).toMatch(new RegExp(`^Uid:\\s+${alice.uid}\\s+${svc.uid}\\s+${svc.uid}\\s+${svc.uid}$`, "m"))
    expect(status).toMatch(new RegExp(`^Gid:\\s+${alice.gid}\\s+${svc.gid}\\s+${svc.gid}\\s+${svc.gid}$`, "m"))
  })

  it("writes each caller's own secrets only, as that caller, mode 0600", () => {
    const result = fetchAs(alice)
    expect(result.stderr).toBe("")
    expect(result.status).toBe(0)
    const expected = { [join(secretsOf(alice), "db_password")]: secret.alice, [join(secretsOf(alice), "api/token")]: secret.aliceTagged }
    expect(filesUnder(secretsOf(alice)).sort()).toEqual(Object.keys(expected).sort())
    for (const [path, content] of Object.entries(expected)) {
      const stat = statSync(path)
      expect({ mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid }).toEqual({ mode: 0o600, uid: alice.uid, gid: alice.gid })
      expect(readFileSync(path, "utf8")).toBe(content)
    }
    expect(statSync(secretsOf(alice)).uid).toBe(alice.uid)
    expect(readdirSync(home(bob))).toEqual([]) // alice's run touched nothing of bob's

    expect(fetchAs(bob).status).toBe(0)
    expect(readFileSync(join(secretsOf(bob), "db_password"), "utf8")).toBe(secret.bob)
    expect(statSync(join(secretsOf(bob), "db_password")).uid).toBe(bob.uid)
    for (const file of filesUnder(secretsOf(alice))) expect(readFileSync(file, "utf8")).not.toContain(secret.bob)
  }, TEST_TIMEOUT)

  // Regression: --secrets-dir was once stat()ed by the option parser while still elevated, so an
  // existing directory the service account cannot search failed with EACCES (exit 70).
  it("fetches again into an existing --secrets-dir that the service account cannot search", () => {
    const privateDir = join(tmp, "private")
    mkdirSync(privateDir, { mode: 0o700 })
    chownSync(privateDir, alice.uid, alice.gid)
    const args = ["--secrets-dir", join(privateDir, "secrets")]
    expect(runAs(alice, args).status).toBe(0) // absent: nothing to stat, works
    const again = runAs(alice, args)
    expect(again.status, again.stderr).toBe(0)
  }, TEST_TIMEOUT)

  it("writes under /run/user/<uid>/secrets when no --secrets-dir is given", () => {
    // Only ever remove what this test creates: the directory, or else its secrets subdirectory.
    if (!existsSync(runUser())) {
      mkdirSync("/run/user", { recursive: true, mode: 0o755 })
      mkdirSync(runUser(), { mode: 0o700 })
      chownSync(runUser(), alice.uid, alice.gid)
      created.paths.push(runUser())
    } else {
      expect(existsSync(join(runUser(), "secrets")), `${runUser()}/secrets already exists`).toBe(false)
      created.paths.push(join(runUser(), "secrets"))
    }
    const result = runAs(alice, [])
    expect(result.status, result.stderr).toBe(0)
    const target = join(runUser(), "secrets", "db_password")
    expect(readFileSync(target, "utf8")).toBe(secret.alice)
    expect(statSync(target).uid).toBe(alice.uid)
  }, TEST_TIMEOUT)

  it("says how to fix a missing /run/user/<uid> (exit 73)", () => {
    const runDir = join("/run/user", String(bob.uid))
    if (existsSync(runDir)) return expect.fail(`${runDir} exists; this test needs a user without a session`)
    const result = runAs(bob, [])
    expect(result.status).toBe(73)
    expect(result.stderr).toContain(`${runDir}: cannot create directory (EACCES); the user has no /run/user directory (run: loginctl enable-linger <user>)`)
    expect(existsSync(runDir)).toBe(false)
  }, TEST_TIMEOUT)

  it("refuses path overrides while elevated (exit 77) and writes nothing", () => {
    const ownMapfile = join(home(alice), "mapfile")
    writeOwned(ownMapfile, `${alice.name} ${ref.bob} stolen\n`, alice.uid, alice.gid, 0o644)
    const ownApi = join(home(alice), "api")
    writeOwned(ownApi, `file:${join(etc, "vault.json")}\n`, alice.uid, alice.gid, 0o600)
    const out = join(home(alice), "override-secrets")
    const attempts: Array<{ args: Array<string>; env?: Record<string, string> }> = [
      { args: ["--map-file-path", ownMapfile] },
      { args: ["--api-key-path", ownApi] },
      { args: [], env: { OP_MAP_FILE_PATH: ownMapfile } },
      { args: [], env: { OP_API_KEY_PATH: ownApi } }
    ]
    for (const { args, env } of attempts) {
      const result = runAs(alice, ["--secrets-dir", out, ...args], env)
      expect(result.status, result.stderr).toBe(77)
      expect(result.stderr).toMatch(/(--map-file-path|--api-key-path) \/ OP_\w+ is refused when running set-user-ID/)
      expect(existsSync(out)).toBe(false)
    }
  }, TEST_TIMEOUT)

  it("proves the drop: ids moved to the caller, the service account cannot be regained, the thread pool cannot read the token, not dumpable", () => {
    const result = fetchAs(alice, "-v")
    expect(result.status).toBe(0)
    const line = result.stderr.match(
      /privileges: uid (\d+)->(\d+) gid (\d+)->(\d+); (\d+) threads verified; regain: (\S+); async open: (\S+); dumpable: (\d); core limit: (\d+)/
    )
    expect(line, result.stderr).not.toBeNull()
    const [, fromUid, toUid, fromGid, toGid, threads, regain, asyncOpen, dumpable, core] = line ?? []
    expect({ fromUid, toUid, fromGid, toGid }).toEqual({
      fromUid: String(svc.uid), toUid: String(alice.uid), fromGid: String(svc.gid), toGid: String(alice.gid)
    })
    expect(Number(threads)).toBeGreaterThan(0)
    expect({ regain, asyncOpen, dumpable, core }).toEqual({ regain: "EPERM", asyncOpen: "EACCES", dumpable: "0", core: "0" })
  }, TEST_TIMEOUT)

  it("refuses to run elevated with variables that Node or libuv read behind its back (exit 77)", () => {
    const out = join(home(alice), "env-secrets")
    const unsafe = { UV_USE_IO_URING: "1", NODE_DEBUG: "fs", ICU_DATA: "/tmp", NODE_TLS_REJECT_UNAUTHORIZED: "0", UV_THREADPOOL_SIZE: "1" }
    for (const [name, setting] of Object.entries(unsafe)) {
      const result = runAs(alice, ["--secrets-dir", out], { [name]: setting })
      expect(result.status, `${name}: ${result.stderr}`).toBe(77)
      expect(result.stderr).toContain(`with ${name} in the environment`)
      expect(existsSync(out)).toBe(false)
    }
  }, TEST_TIMEOUT)

  it("refuses a caller who has no entries in the mapfile (exit 77)", () => {
    const result = fetchAs(carol)
    expect(result.status).toBe(77)
    expect(result.stderr).toContain(`user ${carol.name} has no entries`)
    expect(existsSync(secretsOf(carol))).toBe(false)
  }, TEST_TIMEOUT)

  it("serves root only from a root-owned mapfile that nobody else can write", () => {
    const mapfile = join(etc, "mapfile")
    const target = join(tmp, "rootout", "secret")
    const root = { uid: 0, gid: 0 }
    try {
      const ok = runAs(root, [])
      expect(ok.status, ok.stderr).toBe(0)
      expect(readFileSync(target, "utf8")).toBe(secret.root)
      expect(statSync(target)).toMatchObject({ uid: 0, gid: 0 })
      expect(statSync(target).mode & 0o7777).toBe(0o600)
      rmSync(target)

      chownSync(mapfile, svc.uid, svc.gid)
      const svcOwned = runAs(root, [])
      expect(svcOwned.status, svcOwned.stderr).toBe(77)
      expect(svcOwned.stderr).toContain("a root caller needs a root-owned mapfile")

      chownSync(mapfile, 0, svc.gid)
      chmodSync(mapfile, 0o660)
      const groupWritable = runAs(root, [])
      expect(groupWritable.status, groupWritable.stderr).toBe(77)
      expect(groupWritable.stderr).toContain("is writable by group or others")
      expect(existsSync(target)).toBe(false)
    } finally {
      chownSync(mapfile, 0, svc.gid)
      chmodSync(mapfile, 0o640)
    }
  }, TEST_TIMEOUT)

  it("refuses a credential file that group or others can read (exit 78)", () => {
    const api = join(etc, "api")
    const out = join(home(alice), "mode-secrets")
    try {
      chmodSync(api, 0o644)
      const result = runAs(alice, ["--secrets-dir", out])
      expect(result.status, result.stderr).toBe(78)
      expect(result.stderr).toContain(`chmod 600 ${api}`)
      expect(existsSync(out)).toBe(false)
    } finally {
      chmodSync(api, 0o600)
    }
  }, TEST_TIMEOUT)

  it("cleanup as alice removes only alice's files", () => {
    const bobFile = join(secretsOf(bob), "db_password")
    const before = statSync(bobFile)
    const result = fetchAs(alice, "--cleanup")
    expect(result.status, result.stderr).toBe(0)
    expect(filesUnder(secretsOf(alice))).toEqual([])
    expect(readFileSync(bobFile, "utf8")).toBe(secret.bob)
    expect(statSync(bobFile)).toMatchObject({ ino: before.ino, mtimeMs: before.mtimeMs, uid: bob.uid })
  }, TEST_TIMEOUT)

  it("never leaves a file owned by the service account (only the config files it was given)", () => {
    const owned = sh("find", [tmp, ...(existsSync(runUser()) ? [runUser()] : []), "-user", String(svc.uid)])
    expect(owned.split("\n").filter((line) => line.length > 0).sort()).toEqual([join(etc, "api"), join(etc, "vault.json")])
  })
})
