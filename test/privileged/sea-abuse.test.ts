/**
 * The installed single executable (svc:svc 6755 in a root-owned directory) under abuse, run for
 * real as root: hostile mapfile targets planted by a caller, root as caller, unsafe configuration
 * files, kills at random moments, resource limits, a full file system, parallel runs, and odd
 * process states (argc 0, closed standard descriptors, no_new_privs).
 *
 * After every run: the exit code is the expected one, nothing secret (no vault value, not the
 * credential, not another user's mapfile line) is on stdout or stderr, and every target holds its
 * old or its complete new content. After every case: besides the installed executable only
 * etc/api and etc/vault.json belong to the service account, and none of bob's files changed.
 * Cases named "Regression" reproduce bugs this suite found, deterministically where possible.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync
} from "node:fs"
import { join } from "node:path"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { type Account, hashOf, Installation, isRoot, type Result, writeOwned } from "./installation.ts"

const RUN_TIMEOUT = 30_000
const SETPRIV = "/usr/bin/setpriv"
const STRACE = "/usr/bin/strace"
const TEST_TIMEOUT = 60_000
const root: Account = { name: "root", uid: 0, gid: 0 }
const TEMP_NAME = /^\.op-secret-manager\./

const randomValue = (label: string, bytes = 16) => `${label}-${randomBytes(bytes).toString("hex")}`

interface Finished extends Result {
  readonly timedOut: boolean
}

/** Collects a spawned run; SIGKILL after `timeout` so that nothing can hang the suite. */
const finish = (child: ChildProcess, timeout = RUN_TIMEOUT): Promise<Finished> =>
  new Promise((resolve, reject) => {
    let stdout = "", stderr = "", timedOut = false
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, timeout)
    child.on("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on("close", (status, signal) => {
      clearTimeout(timer)
      resolve({ status, signal, stdout, stderr, timedOut })
    })
  })

const sh = (command: string, args: ReadonlyArray<string>): string => {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: RUN_TIMEOUT })
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${result.status}): ${result.stderr}`)
  return result.stdout.trim()
}

const isMounted = (path: string) =>
  readFileSync("/proc/self/mounts", "utf8").split("\n").some((line) => line.split(" ")[1] === path)

/** Every entry under `path` (recursively) with what it is: files by sha256, inode, owner, mode, links. */
const tree = (path: string, out: Record<string, string> = {}): Record<string, string> => {
  const stat = lstatSync(path, { throwIfNoEntry: false })
  if (stat === undefined) return out
  const facts = `uid ${stat.uid} mode ${(stat.mode & 0o7777).toString(8)}`
  if (stat.isSymbolicLink()) out[path] = `symlink -> ${readlinkSync(path)} ${facts}`
  else if (stat.isDirectory()) {
    out[path] = `directory ${facts}`
    for (const name of readdirSync(path).sort()) tree(join(path, name), out)
  } else if (stat.isFile()) out[path] = `file sha256 ${hashOf(path)} ino ${stat.ino} nlink ${stat.nlink} ${facts}`
  else out[path] = `other (type ${(stat.mode & 0o170000).toString(8)}) ${facts}`
  return out
}

/** Temp or backup files of the writer anywhere under `dir`. */
const litter = (dir: string): Array<string> =>
  existsSync(dir)
    ? readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((name) => TEMP_NAME.test(name.split("/").pop() ?? ""))
    : []

/** Which of the candidate contents `path` holds ("neither ..." otherwise); never prints a value. */
const whichContent = (path: string, candidates: Record<string, string>): string => {
  const stat = lstatSync(path, { throwIfNoEntry: false })
  if (stat === undefined) return "absent"
  if (!stat.isFile()) return "not a regular file"
  const actual = readFileSync(path, "utf8")
  for (const [label, content] of Object.entries(candidates)) if (actual === content) return label
  return `neither (${actual.length} bytes)`
}

describe.skipIf(!isRoot)("installed set-user-ID executable under abuse (as root)", () => {
  const inst = new Installation()
  let alice!: Account, bob!: Account
  let rootTarget!: string, shared!: string, sharedBobFile!: string

  const REF = {
    aliceDb: "op://Vault/alice-db/password",
    aliceApi: "op://Vault/alice-api/token",
    trap: "op://Vault/alice-trap/password",
    bobDb: "op://Vault/bob-db/password",
    bobApi: "op://Vault/bob-api/token",
    root: "op://Vault/root-secret/password",
    root2: "op://Vault/root-second/password"
  } as const

  /** The vault as last written, and every value it ever held (none may ever be printed). */
  const vault: Record<string, string> = {}
  const everySecret = new Set<string>()
  const setVault = (values: Record<string, string>) => {
    Object.assign(vault, values)
    for (const value of Object.values(values)) everySecret.add(value)
    inst.writeVault(vault)
  }
  const value = (ref: string): string => {
    const v = vault[ref]
    if (v === undefined) throw new Error(`${ref} is not in the vault`)
    return v
  }
  const credentialText = () => `file:${join(inst.etc, "vault.json")}`

  const bobLines = () => [`${bob.name} ${REF.bobDb} db_password`, `${bob.name} ${REF.bobApi} api/token`]
  const defaultRootLines = () => [`root ${REF.root} ${rootTarget}`]
  /** alice's lines first (so her line numbers are 1..n), then bob's, then root's. */
  const setMapfile = (aliceLines: ReadonlyArray<string>, rootLines: ReadonlyArray<string> = defaultRootLines()) =>
    inst.writeMapfile([...aliceLines, ...bobLines(), ...rootLines].join("\n") + "\n")
  const aliceGoodLines = () => [`${alice.name} ${REF.aliceDb} db_password`, `${alice.name} ${REF.aliceApi} api/token`]

  // --- what must hold after every run and every case ------------------------------------------

  const expectNoLeak = (caller: string, result: Pick<Result, "stdout" | "stderr">) => {
    const output = result.stdout + result.stderr
    for (const secret of everySecret) {
      const needle = secret.length > 64 ? secret.slice(0, 64) : secret
      expect(output.includes(needle), `the output of ${caller}'s run shows a secret value`).toBe(false)
    }
    expect(output.includes(credentialText()), `the output of ${caller}'s run shows the credential`).toBe(false)
    for (const other of ["alice", "bob", "root"].filter((name) => name !== caller)) {
      expect(output.includes(`op://Vault/${other}-`), `the output of ${caller}'s run shows a mapfile line of ${other}`).toBe(false)
    }
  }

  const expectExit = (caller: string, result: Result, status: number) => {
    expectNoLeak(caller, result)
    expect(result.signal, `${caller}'s run was killed: ${result.stderr}`).toBeNull()
    expect(result.status, result.stderr).toBe(status)
  }

  /** Each target is a regular file of `owner`, mode 0600, holding exactly the given content. */
  const expectFiles = (owner: Account, expected: Record<string, string>) => {
    for (const [path, content] of Object.entries(expected)) {
      expect(whichContent(path, { expected: content }), path).toBe("expected")
      const stat = lstatSync(path)
      expect({ path, uid: stat.uid, mode: stat.mode & 0o7777 }).toEqual({ path, uid: owner.uid, mode: 0o600 })
    }
  }

  let bobBaseline: Record<string, string> = {}
  const bobState = () => tree(sharedBobFile, tree(inst.home(bob)))
  const rememberBob = () => (bobBaseline = bobState())
  const expectBobUnchanged = () => expect(bobState(), "bob's files changed").toEqual(bobBaseline)

  const fetchAs = (user: Account, dir: string, extra: ReadonlyArray<string> = [], timeout = RUN_TIMEOUT) =>
    inst.run(user, ["--secrets-dir", dir, ...extra], { timeout })

  /** A command as alice (the attacker's side: planting links, FIFOs, directories); must succeed. */
  const asAlice = (command: string, args: ReadonlyArray<string>) => {
    const result = inst.runCommandAs(alice, command, args, { timeout: RUN_TIMEOUT })
    expect(result.status, `${command} ${args.join(" ")} as alice: ${result.stderr}`).toBe(0)
  }

  /**
   * A fresh secrets dir of alice's holding her two ordinary secrets (the "old" content); then the
   * vault gets new values, so any run that writes would change them.
   */
  const freshAliceDir = (name: string) => {
    const dir = join(inst.home(alice), name)
    setVault({ [REF.aliceDb]: randomValue("alice-db-old"), [REF.aliceApi]: randomValue("alice-api-old") })
    setMapfile(aliceGoodLines())
    expectExit("alice", fetchAs(alice, dir), 0)
    const old = { [join(dir, "db_password")]: value(REF.aliceDb), [join(dir, "api/token")]: value(REF.aliceApi) }
    expectFiles(alice, old)
    setVault({ [REF.aliceDb]: randomValue("alice-db-new"), [REF.aliceApi]: randomValue("alice-api-new"), [REF.trap]: randomValue("alice-trap") })
    const fresh = { [join(dir, "db_password")]: value(REF.aliceDb), [join(dir, "api/token")]: value(REF.aliceApi) }
    return { dir, old, fresh }
  }

  beforeAll(async () => {
    await inst.create(["alice", "bob"])
    alice = inst.user("alice")
    bob = inst.user("bob")
    for (const user of [alice, bob]) chmodSync(inst.home(user), 0o700)
    rootTarget = join(inst.tmp, "rootout", "secret")
    // A world-writable sticky directory (like /tmp) with a file of bob's that alice may read.
    shared = join(inst.tmp, "shared")
    mkdirSync(shared)
    chmodSync(shared, 0o1777)
    sharedBobFile = join(shared, "bob-file")
    writeOwned(sharedBobFile, "bob's shared file\n", bob, 0o644)

    setVault({
      [REF.aliceDb]: randomValue("alice-db"),
      [REF.aliceApi]: randomValue("alice-api"),
      [REF.bobDb]: randomValue("bob-db"),
      [REF.bobApi]: randomValue("bob-api"),
      [REF.root]: randomValue("root")
    })
    setMapfile(aliceGoodLines())
    expectExit("bob", fetchAs(bob, inst.secretsDir(bob)), 0)
    writeOwned(join(inst.home(bob), "notes.txt"), "bob's private notes\n", bob, 0o600)
    expectFiles(bob, {
      [join(inst.secretsDir(bob), "db_password")]: value(REF.bobDb),
      [join(inst.secretsDir(bob), "api/token")]: value(REF.bobApi)
    })
    rememberBob()
  }, 180_000)

  afterAll(() => {
    for (const line of readFileSync("/proc/self/mounts", "utf8").split("\n")) {
      const mountpoint = line.split(" ")[1]
      if (inst.tmp !== undefined && mountpoint?.startsWith(inst.tmp + "/")) spawnSync("umount", [mountpoint], { timeout: RUN_TIMEOUT })
    }
    inst.remove()
  })

  afterEach(() => {
    if (inst.tmp === undefined || alice === undefined) return
    // The installed executable itself is svc:svc 6755 by design; besides it only the two config files.
    expect(inst.filesOwnedBySvc()).toEqual([inst.bin, join(inst.etc, "api"), join(inst.etc, "vault.json")].sort())
    expectBobUnchanged()
  })

  // --- 8. mapfile abuse as alice ---------------------------------------------------------------

  it("refuses '..' in alice's relative and absolute paths (exit 65) and writes nothing", () => {
    const { dir, old } = freshAliceDir("c8-dotdot")
    for (const path of ["../escape", "sub/../../escape", `${dir}/../c8-escape/secret`]) {
      setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} ${path}`])
      const before = tree(inst.home(alice))
      const result = fetchAs(alice, dir)
      expectExit("alice", result, 65)
      expect(result.stderr).toContain("line 3: invalid path: the path contains a '..' segment")
      expect(tree(inst.home(alice)), path).toEqual(before)
      expectFiles(alice, old)
      expectBobUnchanged()
    }
  }, TEST_TIMEOUT)

  it("replaces a target symlink that alice planted to bob's files instead of writing through it", () => {
    const { dir, fresh } = freshAliceDir("c8-symlink")
    const links = { [join(dir, "to-bob-secret")]: join(inst.secretsDir(bob), "db_password"), [join(dir, "to-bob-shared")]: sharedBobFile }
    for (const [link, target] of Object.entries(links)) asAlice("ln", ["-s", target, link])
    setMapfile([
      ...aliceGoodLines(),
      `${alice.name} ${REF.trap} to-bob-secret`,
      `${alice.name} ${REF.trap} to-bob-shared`
    ])
    // rename(2) replaces each link (a hard link to the link is the backup): alice gets her own
    // regular file and nothing is written through the link.
    expectExit("alice", fetchAs(alice, dir), 0)
    expectFiles(alice, { ...fresh, ...Object.fromEntries(Object.keys(links).map((link) => [link, value(REF.trap)])) })
    expectBobUnchanged()
  }, TEST_TIMEOUT)

  it("cannot write through a parent-directory symlink into bob's 0700 home or over bob's file in a sticky directory (exit 73)", () => {
    const { dir, old } = freshAliceDir("c8-parent-link")
    asAlice("ln", ["-s", inst.home(bob), join(dir, "bob-home")])
    asAlice("ln", ["-s", shared, join(dir, "shared")])
    for (const path of ["bob-home/secrets/db_password", "bob-home/planted", "shared/bob-file"]) {
      setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} ${path}`])
      const result = fetchAs(alice, dir)
      expectExit("alice", result, 73)
      expect(result.stderr, path).toContain("every target was left as it was")
      expectFiles(alice, old)
      expect(litter(shared)).toEqual([])
      expectBobUnchanged()
    }
    // Where alice may write (a new name in the sticky directory), the same link works, as hers.
    setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} shared/alice-file`])
    const allowed = fetchAs(alice, dir)
    expectExit("alice", allowed, 0)
    expectFiles(alice, { [join(shared, "alice-file")]: value(REF.trap) })
    rmSync(join(shared, "alice-file"))
  }, TEST_TIMEOUT)

  it("refuses a FIFO, /dev/zero or a directory as the target (exit 73) without hanging or changing anything", () => {
    const { dir, old } = freshAliceDir("c8-special")
    asAlice("mkfifo", [join(dir, "fifo")])
    asAlice("mkdir", [join(dir, "directory")])
    asAlice("sh", ["-c", `printf 'kept' > '${join(dir, "directory", "inside")}'`])
    const zero = statSync("/dev/zero")
    const cases = [
      { path: "fifo", message: "exists and is not a regular file" },
      { path: "/dev/zero", message: "exists and is not a regular file" },
      { path: "directory", message: "is a directory" }
    ]
    for (const { path, message } of cases) {
      setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} ${path}`])
      const before = tree(dir)
      const started = Date.now()
      const result = fetchAs(alice, dir, [], 15_000)
      expectExit("alice", result, 73)
      expect(Date.now() - started).toBeLessThan(15_000)
      expect(result.stderr).toContain(message)
      expect(tree(dir), path).toEqual(before)
      expectFiles(alice, old)
      expectBobUnchanged()
    }
    expect(lstatSync(join(dir, "fifo")).isFIFO()).toBe(true)
    expect(readFileSync(join(dir, "directory", "inside"), "utf8")).toBe("kept")
    expect(statSync("/dev/zero")).toMatchObject({ rdev: zero.rdev, ino: zero.ino, mode: zero.mode })
  }, TEST_TIMEOUT)

  it("replaces a hard-linked target with a new file: the other link keeps its content", () => {
    const { dir, fresh } = freshAliceDir("c8-hardlink")
    const other = join(dir, "other"), linked = join(dir, "linked")
    asAlice("sh", ["-c", `printf 'alice other file' > '${other}' && chmod 600 '${other}' && ln '${other}' '${linked}'`])
    expect(lstatSync(linked).nlink).toBe(2)
    setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} linked`])
    expectExit("alice", fetchAs(alice, dir), 0)
    expectFiles(alice, { ...fresh, [linked]: value(REF.trap) })
    expect(readFileSync(other, "utf8")).toBe("alice other file")
    expect([lstatSync(other).nlink, lstatSync(linked).nlink]).toEqual([1, 1])
  }, TEST_TIMEOUT)

  it("refuses absolute paths into bob's home (exit 73)", () => {
    const { dir, old } = freshAliceDir("c8-absolute")
    for (const path of [join(inst.secretsDir(bob), "db_password"), join(inst.home(bob), "planted")]) {
      setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} ${path}`])
      const result = fetchAs(alice, dir)
      expectExit("alice", result, 73)
      expectFiles(alice, old)
      expectBobUnchanged()
    }
  }, TEST_TIMEOUT)

  // --- 9. root as caller ---------------------------------------------------------------------

  it("serves root from a root:svc 0640 mapfile: a root-owned 0600 file under a root-owned directory", () => {
    setVault({ [REF.root]: randomValue("root") })
    setMapfile(aliceGoodLines())
    expectExit("root", inst.run(root, []), 0)
    expectFiles(root, { [rootTarget]: value(REF.root) })
    expect(statSync(rootTarget).gid).toBe(0)
  }, TEST_TIMEOUT)

  it("refuses root (exit 77, before any write) when the mapfile is owned by svc, group-writable, or a symlink", () => {
    const mapfile = join(inst.etc, "mapfile")
    setVault({ [REF.root]: randomValue("root-old") })
    setMapfile(aliceGoodLines())
    expectExit("root", inst.run(root, []), 0)
    const old = { [rootTarget]: value(REF.root) }
    setVault({ [REF.root]: randomValue("root-new") })
    const copy = join(inst.tmp, "mapfile-copy")
    const tampers = [
      {
        name: "owned by svc",
        tamper: () => chownSync(mapfile, inst.svc.uid, inst.svc.gid),
        message: `is owned by uid ${inst.svc.uid}; a root caller needs a root-owned mapfile`
      },
      { name: "mode 0660", tamper: () => chmodSync(mapfile, 0o660), message: "is writable by group or others" },
      {
        name: "a symlink to a root-owned copy",
        tamper: () => {
          writeOwned(copy, readFileSync(mapfile), { uid: 0, gid: inst.svc.gid }, 0o640)
          rmSync(mapfile)
          symlinkSync(copy, mapfile)
        },
        message: "is a symbolic link"
      }
    ]
    for (const { name, tamper, message } of tampers) {
      try {
        tamper()
        const before = tree(join(inst.tmp, "rootout"))
        const result = inst.run(root, [])
        expectExit("root", result, 77)
        expect(result.stderr, name).toContain(`refusing to run for root: mapfile ${mapfile} ${message}`)
        expect(tree(join(inst.tmp, "rootout")), name).toEqual(before)
        expectFiles(root, old)
      } finally {
        rmSync(mapfile, { force: true }) // unlink first: writing through the symlink would change the copy
        rmSync(copy, { force: true })
        setMapfile(aliceGoodLines())
      }
      expect(lstatSync(mapfile)).toMatchObject({ uid: 0, gid: inst.svc.gid, mode: 0o100640 })
    }
    // The restored mapfile serves root again.
    expectExit("root", inst.run(root, []), 0)
    expectFiles(root, { [rootTarget]: value(REF.root) })
  }, TEST_TIMEOUT)

  it("does not follow symlinks that alice planted at root's targets in a sticky world-writable directory", () => {
    const sticky = join(inst.tmp, "sticky")
    mkdirSync(sticky)
    chmodSync(sticky, 0o1777)
    const rootDir = join(inst.tmp, "root-only")
    mkdirSync(rootDir, { mode: 0o755 })
    const precious = join(rootDir, "precious")
    writeOwned(precious, "root's precious file\n", root, 0o644)
    const rootDirBefore = tree(rootDir)
    const toFile = join(sticky, "target"), dangling = join(sticky, "dangling")
    asAlice("ln", ["-s", precious, toFile])
    asAlice("ln", ["-s", join(rootDir, "created-through-link"), dangling])
    // Parent directories that are alice's symlinks into root's directory: refused outright.
    asAlice("ln", ["-s", rootDir, join(sticky, "parent")])
    asAlice("ln", ["-s", join(rootDir, "new-dir"), join(sticky, "dangling-parent")])
    setVault({ [REF.root]: randomValue("root-sticky"), [REF.root2]: randomValue("root-sticky-2") })
    try {
      for (const path of [join(sticky, "parent", "precious"), join(sticky, "dangling-parent", "secret")]) {
        setMapfile(aliceGoodLines(), [`root ${REF.root} ${path}`])
        const refused = inst.run(root, [])
        expectExit("root", refused, 73)
        expect(refused.stderr, path).toContain(`is a symbolic link owned by uid ${alice.uid}`)
        expect(tree(rootDir)).toEqual(rootDirBefore)
      }
      setMapfile(aliceGoodLines(), [`root ${REF.root} ${toFile}`, `root ${REF.root2} ${dangling}`])
      expectExit("root", inst.run(root, []), 0)
      expect(tree(rootDir)).toEqual(rootDirBefore)
      // Each link was replaced by root's own regular file.
      expectFiles(root, { [toFile]: value(REF.root), [dangling]: value(REF.root2) })
    } finally {
      setMapfile(aliceGoodLines())
    }
  }, TEST_TIMEOUT)

  // --- 10. unsafe configuration files for alice's run ------------------------------------------

  const api = () => join(inst.etc, "api")
  const configCases: Array<{ name: string; tamper: () => void; restore: () => void; status: number; message: () => string }> = [
    {
      name: "refuses a credential that others can read (0644) with exit 78 and says to chmod 600",
      tamper: () => chmodSync(api(), 0o644),
      restore: () => setVault({}),
      status: 78,
      message: () => `is accessible by group or others (mode 0644); run: chmod 600 ${api()}`
    },
    {
      name: "refuses a credential owned by alice (alice:svc 0640, readable by svc) with exit 78",
      tamper: () => {
        chownSync(api(), alice.uid, inst.svc.gid)
        chmodSync(api(), 0o640)
      },
      restore: () => setVault({}),
      status: 78,
      message: () => `is owned by uid ${alice.uid}; it must belong to root or uid ${inst.svc.uid}`
    },
    {
      // svc cannot even open it, so it is refused as unreadable (66, with the set-user-ID hint), not
      // as unsafe (78): the owner is only checked on an opened descriptor.
      name: "refuses a credential owned by alice (chown, mode 0600) that svc cannot open (exit 66)",
      tamper: () => chownSync(api(), alice.uid, alice.gid),
      restore: () => setVault({}),
      status: 66,
      message: () => `credential file ${api()} is not readable`
    },
    {
      name: "refuses a FIFO as the credential (exit 78) without hanging",
      tamper: () => {
        rmSync(api())
        sh("mkfifo", ["-m", "600", api()])
        chownSync(api(), inst.svc.uid, inst.svc.gid)
      },
      restore: () => {
        rmSync(api(), { force: true })
        setVault({})
      },
      status: 78,
      message: () => "is not a regular file"
    },
    {
      name: "refuses a 100 MB (sparse) mapfile with exit 78 'larger than'",
      tamper: () => sh("truncate", ["-s", "100M", join(inst.etc, "mapfile")]),
      restore: () => setMapfile(aliceGoodLines()),
      status: 78,
      message: () => "is larger than 1048576 bytes"
    }
  ]
  for (const { name, tamper, restore, status, message } of configCases) {
    it(name, () => {
      const { dir, old, fresh } = freshAliceDir(`c10-${configCases.findIndex((c) => c.name === name)}`)
      try {
        tamper()
        const started = Date.now()
        const result = fetchAs(alice, dir, [], 15_000)
        expectExit("alice", result, status)
        expect(Date.now() - started).toBeLessThan(15_000)
        expect(result.stderr).toContain(message())
        expectFiles(alice, old)
      } finally {
        restore()
      }
      // Control: with the file restored the same run works.
      expectExit("alice", fetchAs(alice, dir), 0)
      expectFiles(alice, fresh)
    }, TEST_TIMEOUT)
  }

  // --- 11. faults ------------------------------------------------------------------------------

  /** alice's batch of 300 entries in three directories, values of varying length per version. */
  const batch = (name: string) => {
    const dir = join(inst.home(alice), name)
    const N = 300
    const refs = Array.from({ length: N }, (_, i) => `op://Vault/alice-batch-${i}/password`)
    const targets = refs.map((_, i) => join(dir, `part${i % 3}`, `secret-${i}`))
    setMapfile(refs.map((ref, i) => `${alice.name} ${ref} part${i % 3}/secret-${i}`))
    // Lengths vary, so that a truncated or partly written file cannot match either version.
    const version = (label: string) => Object.fromEntries(refs.map((ref, i) => [ref, randomValue(`${label}-${i}`, 4 + (i % 40))]))
    const filesOf = (v: Record<string, string>) => Object.fromEntries(refs.map((ref, i) => [targets[i] ?? "", v[ref] ?? ""]))
    /** How many targets hold v1 and how many v2; anything else (partial, empty, gone, a link) fails. */
    const census = (v1: Record<string, string>, v2: Record<string, string>) => {
      const seen = { v1: 0, v2: 0 }
      for (const [i, ref] of refs.entries()) {
        const target = targets[i] ?? ""
        const which = whichContent(target, { v1: v1[ref] ?? "", v2: v2[ref] ?? "" })
        expect(which, target).toMatch(/^v[12]$/)
        seen[which as "v1" | "v2"]++
      }
      return seen
    }
    return { dir, N, version, filesOf, census }
  }

  /** Runs `action` as soon as a temp (.tmp: staging) or backup (.bak: renaming) file of the writer shows up. */
  const whenWriterFile = (dir: string, suffix: ".tmp" | ".bak", child: ChildProcess, action: () => void) => {
    const state = { fired: false }
    const poll = () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      if (litter(dir).some((name) => name.endsWith(suffix))) {
        state.fired = true
        action()
      } else setImmediate(poll)
    }
    poll()
    return state
  }

  it("a batch of 300 killed at random moments (SIGKILL, SIGTERM) leaves each file old or new, never partial; the next run cleans up", async () => {
    const { dir, N, version, filesOf, census } = batch("c11-kill")
    type Round = { signal: "SIGKILL" | "SIGTERM"; slot?: number; trigger?: ".tmp" | ".bak" }
    // 12 timed rounds: per signal, 6 delays, each from its own sixth of a run's duration (measured
    // in the same round, at most 300 ms), shuffled; then 4 rounds triggered by what the writer is
    // doing: staging (first .tmp) or renaming (first .bak).
    const rounds: Array<Round> = [
      ...(["SIGKILL", "SIGTERM"] as const).flatMap((signal) => Array.from({ length: 6 }, (_, slot) => ({ signal, slot })))
        .sort(() => Math.random() - 0.5),
      { signal: "SIGKILL", trigger: ".tmp" },
      { signal: "SIGKILL", trigger: ".bak" },
      { signal: "SIGKILL", trigger: ".bak" },
      { signal: "SIGTERM", trigger: ".tmp" }
    ]
    const log: Array<string> = []
    const count = { killed: 0, renameKills: 0, sigtermAfterExit: 0 }
    for (const { signal, slot, trigger } of rounds) {
      const v1 = version("v1"), v2 = version("v2")
      setVault(v1)
      const started = Date.now()
      expectExit("alice", fetchAs(alice, dir), 0)
      const duration = Date.now() - started
      expect(litter(dir), "the run after a kill removes the killed run's temp files").toEqual([])
      expectFiles(alice, filesOf(v1))

      setVault(v2)
      const child = inst.spawn(alice, ["--secrets-dir", dir])
      const done = finish(child)
      let sent = false
      const kill = () => {
        if (child.exitCode === null && child.signalCode === null) sent = child.kill(signal)
      }
      const delay = slot === undefined ? undefined : Math.floor(((slot + Math.random()) / 6) * Math.min(duration, 300))
      const timer = delay === undefined ? undefined : setTimeout(kill, delay)
      const watch = trigger === undefined ? undefined : whenWriterFile(dir, trigger, child, kill)
      const result = await done
      clearTimeout(timer)
      expectNoLeak("alice", result)
      expect(result.timedOut).toBe(false)

      const seen = census(v1, v2)
      if (result.status === 0) {
        // Finished before the signal landed (it was sent as the process was already exiting).
        expect(seen.v2, result.stderr).toBe(N)
        if (sent && signal === "SIGTERM") count.sigtermAfterExit++
      } else if (signal === "SIGKILL") {
        expect(result.signal, result.stderr).toBe("SIGKILL")
        count.killed++
        if (trigger === ".bak" && watch?.fired) count.renameKills++
      } else {
        expect(result.status === 143 || result.signal === "SIGTERM", `SIGTERM gave ${result.status}/${result.signal}: ${result.stderr}`).toBe(true)
        // A handled SIGTERM never stops the commit half way: all or nothing.
        expect([0, N], "SIGTERM left a partial batch").toContain(seen.v2)
      }
      const when = delay === undefined ? `at first ${trigger}${watch?.fired ? "" : " (never seen)"}` : `@${delay}ms of ${duration}ms`
      log.push(`${signal} ${when}: exit ${result.status ?? result.signal}, ${seen.v2}/${N} new, ${litter(dir).length} temp files left`)
    }
    console.info(`kill rounds (${count.sigtermAfterExit} SIGTERMs landed after the run had finished):\n  ${log.join("\n  ")}`)
    expect(count.killed, "too few SIGKILLs landed while the run was alive").toBeGreaterThanOrEqual(6)
    expect(count.renameKills, "no SIGKILL landed among the renames").toBeGreaterThanOrEqual(1)

    const last = version("v2-final")
    setVault(last)
    expectExit("alice", fetchAs(alice, dir), 0)
    expectFiles(alice, filesOf(last))
    expect(litter(dir)).toEqual([])
  }, 120_000)

  // Regression: a SIGTERM that arrived while the run was busy synchronously (reading, planning,
  // staging, renaming) was never handed to the JS listeners (Node's signal handles are unref'd),
  // so the run exited 0. The exit now waits one event-loop turn for pending signals.
  it("a SIGTERM that arrives while the batch is staged still ends the run with 143", async () => {
    const { dir, N, version, filesOf, census } = batch("c11-sigterm")
    const v1 = version("v1"), v2 = version("v2")
    setVault(v1)
    expectExit("alice", fetchAs(alice, dir), 0)
    expectFiles(alice, filesOf(v1))
    setVault(v2)
    const child = inst.spawn(alice, ["--secrets-dir", dir])
    const done = finish(child)
    const watch = whenWriterFile(dir, ".tmp", child, () => child.kill("SIGTERM"))
    const result = await done
    expectNoLeak("alice", result)
    expect([0, N]).toContain(census(v1, v2).v2)
    expect(watch.fired).toBe(true)
    expect(result.status, result.stderr).toBe(143)
  }, TEST_TIMEOUT)

  it("RLIMIT_FSIZE below a secret's size fails the write (73) and keeps every old file; a tiny one refuses to start (77)", () => {
    const dir = join(inst.home(alice), "c11-fsize")
    const big = "op://Vault/alice-big/password", small = "op://Vault/alice-small/password"
    setMapfile([`${alice.name} ${small} small`, `${alice.name} ${big} big`])
    setVault({ [small]: randomValue("small-old"), [big]: randomValue("big-old") })
    expectExit("alice", fetchAs(alice, dir), 0)
    const old = { [join(dir, "small")]: value(small), [join(dir, "big")]: value(big) }
    // 3 MB: above a 2 MiB limit that still lets the 1.1 MB native addon load.
    setVault({ [small]: randomValue("small-new"), [big]: randomValue("big-new", 1536 * 1024) })
    const underLimit = (bytes: number) =>
      inst.runCommandAs(alice, "/usr/bin/prlimit", [`--fsize=${bytes}:${bytes}`, "--", inst.bin, "--secrets-dir", dir], { timeout: RUN_TIMEOUT })

    const tooBig = underLimit(2 * 1024 * 1024)
    expectExit("alice", tooBig, 73)
    expect(tooBig.stderr).toContain(`${join(dir, "big")}: cannot write (EFBIG)`)
    expectFiles(alice, old)
    expect(litter(dir)).toEqual([])

    const tiny = underLimit(64 * 1024)
    expectExit("alice", tiny, 77)
    expect(tiny.stderr).toContain("cannot load the embedded native addon")
    expectFiles(alice, old)

    expectExit("alice", fetchAs(alice, dir), 0)
    expectFiles(alice, { [join(dir, "small")]: value(small), [join(dir, "big")]: value(big) })
    expect(litter(dir)).toEqual([])
    setVault({ [big]: randomValue("big-small-again") }) // keep the vault small for the cases after this one
  }, TEST_TIMEOUT)

  it("a full file system (64 KiB tmpfs as alice's secrets dir) fails a 100 KB secret (73), keeps the old files, leaves no temp file", () => {
    const dir = join(inst.home(alice), "c11-tmpfs")
    mkdirSync(dir)
    sh("mount", ["-t", "tmpfs", "-o", `size=64k,mode=0700,uid=${alice.uid},gid=${alice.gid}`, "osm-sea-abuse", dir])
    try {
      const a = "op://Vault/alice-fs-a/password", b = "op://Vault/alice-fs-b/password", big = "op://Vault/alice-fs-big/password"
      setMapfile([`${alice.name} ${a} a`, `${alice.name} ${b} nested/b`, `${alice.name} ${big} big`])
      setVault({ [a]: randomValue("fs-a-old"), [b]: randomValue("fs-b-old"), [big]: randomValue("fs-big-old") })
      expectExit("alice", fetchAs(alice, dir), 0)
      const old = { [join(dir, "a")]: value(a), [join(dir, "nested/b")]: value(b), [join(dir, "big")]: value(big) }
      expectFiles(alice, old)

      setVault({ [a]: randomValue("fs-a-new"), [b]: randomValue("fs-b-new"), [big]: randomValue("fs-big-new", 50 * 1024) })
      const full = fetchAs(alice, dir)
      expectExit("alice", full, 73)
      expect(full.stderr).toContain("ENOSPC")
      expectFiles(alice, old)
      expect(litter(dir)).toEqual([])

      setVault({ [big]: randomValue("fs-big-fits") })
      expectExit("alice", fetchAs(alice, dir), 0)
      expectFiles(alice, { [join(dir, "a")]: value(a), [join(dir, "nested/b")]: value(b), [join(dir, "big")]: value(big) })
      expect(litter(dir)).toEqual([])
    } finally {
      spawnSync("umount", [dir], { timeout: RUN_TIMEOUT })
    }
    expect(isMounted(dir)).toBe(false)
  }, TEST_TIMEOUT)

  // --- 12. concurrency -------------------------------------------------------------------------

  for (const serialize of [false, true]) {
    it(`20 parallel runs of alice and bob ${serialize ? "with" : "without"} --serialize all succeed with exact contents and no temp files`, async () => {
      const name = serialize ? "c12-serialized" : "c12-parallel"
      const dirs = { alice: join(inst.home(alice), name), bob: join(inst.home(bob), name) }
      const refsOf = (owner: "alice" | "bob") => Array.from({ length: 10 }, (_, i) => `op://Vault/${owner}-parallel-${i}/password`)
      const pathOf = (i: number) => `${i % 2 === 0 ? "even" : "odd"}/deep/secret-${i}`
      const line = (user: Account, owner: "alice" | "bob") => refsOf(owner).map((ref, i) => `${user.name} ${ref} ${pathOf(i)}`)
      const newValues = () => setVault(Object.fromEntries([...refsOf("alice"), ...refsOf("bob")].map((ref) => [ref, randomValue(ref.split("/")[3] ?? "")])))
      inst.writeMapfile([...line(alice, "alice"), ...line(bob, "bob"), ...defaultRootLines()].join("\n") + "\n")
      // The directories do not exist yet: parallel runs create the same nested directories at once.
      newValues()

      const args = serialize ? ["--serialize", "--lock-timeout", "60"] : []
      const runs = Array.from({ length: 20 }, (_, i) => {
        const [user, owner] = i % 2 === 0 ? [alice, "alice"] as const : [bob, "bob"] as const
        return { owner, result: finish(inst.spawn(user, ["--secrets-dir", dirs[owner], ...args]), 90_000) }
      })
      const results = await Promise.all(runs.map(async ({ owner, result }) => ({ owner, result: await result })))
      for (const { owner, result } of results) {
        expect(result.timedOut).toBe(false)
        expectExit(owner, result, 0)
      }
      expectFiles(alice, Object.fromEntries(refsOf("alice").map((ref, i) => [join(dirs.alice, pathOf(i)), value(ref)])))
      expectFiles(bob, Object.fromEntries(refsOf("bob").map((ref, i) => [join(dirs.bob, pathOf(i)), value(ref)])))
      expect([...litter(dirs.alice), ...litter(dirs.bob)]).toEqual([])
      setMapfile(aliceGoodLines())
      rememberBob() // bob's own runs changed his files
    }, 120_000)
  }

  // Regression: ensureDirectory tolerated EEXIST only for the first directory it would create, so a
  // deeper one made by another run of the same user in between failed the run (73 EEXIST); parallel
  // unserialized runs into a missing nested directory hit it about 3% of the time. strace holds the
  // run's first mkdir for 300 ms while a racer (alice) creates the next directory: deterministic.
  // .ci/run installs strace; without it the case cannot be staged.
  const itWithStrace = existsSync(STRACE) ? it : it.skip
  itWithStrace("accepts a directory that another run creates while this run creates the path", async () => {
    const dir = join(inst.home(alice), "c12-race")
    setVault({ [REF.aliceDb]: randomValue("alice-db-race"), [REF.aliceApi]: randomValue("alice-api-race") })
    setMapfile([`${alice.name} ${REF.aliceDb} even/deep/db_password`, `${alice.name} ${REF.aliceApi} odd/deep/api`])
    const ids = ["--reuid", String(alice.uid), "--regid", String(alice.gid), "--clear-groups"]
    const racer = [
      "import os, sys, time",
      "d = sys.argv[1]",
      "deadline = time.monotonic() + 20",
      "while not os.path.isdir(d) and time.monotonic() < deadline:",
      "    time.sleep(0.001)",
      "os.mkdir(os.path.join(d, 'even'), 0o700)"
    ].join("\n")
    const racing = finish(spawn(SETPRIV, [...ids, "--", "/usr/bin/python3", "-c", racer, dir], { stdio: ["ignore", "pipe", "pipe"] }), 25_000)
    const delayed = ["-f", "-qq", "-o", "/dev/null", "-e", "trace=mkdir,mkdirat", "-e", "inject=mkdir,mkdirat:delay_exit=300000"]
    const run = spawn(STRACE, [...delayed, SETPRIV, ...ids, "--", inst.bin, "--secrets-dir", dir], {
      cwd: inst.tmp,
      env: { PATH: "/usr/bin:/bin" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    const result = await finish(run)
    expect((await racing).status).toBe(0)
    expectNoLeak("alice", result)
    expect(result.status, result.stderr).toBe(0)
    expectFiles(alice, { [join(dir, "even/deep/db_password")]: value(REF.aliceDb), [join(dir, "odd/deep/api")]: value(REF.aliceApi) })
  }, TEST_TIMEOUT)

  // --- 14. odd process states ------------------------------------------------------------------

  it("argc 0 (execve with an empty argv) gives a clear outcome: the default secrets are written", () => {
    const runDir = join("/run/user", String(alice.uid))
    if (!existsSync("/run/user")) {
      mkdirSync("/run/user", { mode: 0o755 })
      inst.track("/run/user")
    }
    if (!existsSync(runDir)) {
      mkdirSync(runDir, { mode: 0o700 })
      chownSync(runDir, alice.uid, alice.gid)
      inst.track(runDir)
    } else {
      expect(existsSync(join(runDir, "secrets")), `${runDir}/secrets already exists`).toBe(false)
      inst.track(join(runDir, "secrets"))
    }
    setVault({ [REF.aliceDb]: randomValue("alice-db-argc0"), [REF.aliceApi]: randomValue("alice-api-argc0") })
    setMapfile(aliceGoodLines())
    // Python's os.execve refuses an empty argv, so call libc's execve directly.
    const script = [
      "import ctypes, sys",
      "libc = ctypes.CDLL(None, use_errno=True)",
      "argv = (ctypes.c_char_p * 1)(None)",
      "envp = (ctypes.c_char_p * 2)(b'PATH=/usr/bin:/bin', None)",
      `libc.execve(${JSON.stringify(inst.bin)}.encode(), argv, envp)`,
      "print('execve failed', ctypes.get_errno(), file=sys.stderr)",
      "sys.exit(99)"
    ].join("\n")
    const result = inst.runCommandAs(alice, "/usr/bin/python3", ["-c", script], { timeout: RUN_TIMEOUT })
    expectNoLeak("alice", result)
    const targets = { [join(runDir, "secrets", "db_password")]: value(REF.aliceDb), [join(runDir, "secrets", "api/token")]: value(REF.aliceApi) }
    if (result.status === 0) {
      expectFiles(alice, targets)
    } else {
      expect(result.status, result.stderr).not.toBe(99)
      expect(result.stderr).toMatch(/^op-secret-manager: error: [^\n]+\n$/)
      for (const path of Object.keys(targets)) expect(existsSync(path)).toBe(false)
    }
    expect(litter(runDir)).toEqual([])
  }, TEST_TIMEOUT)

  const closedStdio = (dir: string, extra: ReadonlyArray<string> = []) =>
    inst.runCommandAs(alice, "/bin/bash", ["-c", 'exec <&- >&- 2>&-; exec "$0" "$@"', inst.bin, "--secrets-dir", dir, ...extra], {
      timeout: RUN_TIMEOUT
    })

  it("with fds 0-2 closed it still writes correctly and never writes log text into a secret file", () => {
    const dir = join(inst.home(alice), "c14-closed")
    setVault({ [REF.aliceDb]: randomValue("alice-db-closed"), [REF.aliceApi]: randomValue("alice-api-closed") })
    setMapfile(aliceGoodLines())
    const expected = { [join(dir, "db_password")]: value(REF.aliceDb), [join(dir, "api/token")]: value(REF.aliceApi) }
    // The set-user-ID exec makes glibc put /dev/full on fd 0 and read-only /dev/null on 1 and 2: the
    // "Successfully wrote" lines fail with EBADF, and nothing can land in a file the program opens.
    expectExit("alice", closedStdio(dir), 0)
    expectFiles(alice, expected)
    expect(readdirSync(dir).sort()).toEqual(["api", "db_password"])
    // A failing run (a directory at one target): exit 73, every target as it was.
    setVault({ [REF.aliceDb]: randomValue("alice-db-closed2"), [REF.trap]: randomValue("alice-trap-closed") })
    asAlice("mkdir", [join(dir, "blocked")])
    setMapfile([...aliceGoodLines(), `${alice.name} ${REF.trap} blocked`])
    expectExit("alice", closedStdio(dir), 73)
    expectFiles(alice, expected)
    expect(readdirSync(join(dir, "blocked"))).toEqual([])
    setMapfile(aliceGoodLines())
  }, TEST_TIMEOUT)

  // Regression: with fd 2 closed (the set-user-ID exec turns it into a read-only /dev/null), the
  // first stderr line failed with EBADF, raised as an unhandled 'error' event: exit 1 after writing.
  it("with fds 0-2 closed a run that logs (-v) still exits 0", () => {
    const dir = join(inst.home(alice), "c14-closed-verbose")
    setVault({ [REF.aliceDb]: randomValue("alice-db-closed-v"), [REF.aliceApi]: randomValue("alice-api-closed-v") })
    setMapfile(aliceGoodLines())
    const result = closedStdio(dir, ["-v"])
    expectNoLeak("alice", result)
    // What matters for safety holds: the secrets are exact, no log text went into them.
    expectFiles(alice, { [join(dir, "db_password")]: value(REF.aliceDb), [join(dir, "api/token")]: value(REF.aliceApi) })
    expect(result.status).toBe(0)
  }, TEST_TIMEOUT)

  it("under no_new_privs (set-user-ID ignored) it fails clearly with 66 and a hint, writing nothing", () => {
    const dir = join(inst.home(alice), "c14-nnp")
    setMapfile(aliceGoodLines())
    const result = inst.runCommandAs(alice, SETPRIV, ["--no-new-privs", "--", inst.bin, "--secrets-dir", dir], { timeout: RUN_TIMEOUT })
    expectExit("alice", result, 66)
    expect(result.stderr).toBe(`op-secret-manager: error: mapfile ${join(inst.etc, "mapfile")} is not readable (is the executable installed set-user-ID?)\n`)
    expect(existsSync(dir)).toBe(false)
  }, TEST_TIMEOUT)
})
