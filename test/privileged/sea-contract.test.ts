/**
 * The set-user-ID contract (DESIGN.md section 1) against the real single executable, installed
 * svc:svc 6755 by the Installation fixture: the kernel's set-user-ID exec, not a simulation.
 * After every run: the expected exit code, no file owned by the service account except the two
 * it was given, and no secret value (nor the credential) in the output.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Account, Installation, isRoot, type Result, writeOwned } from "./installation.ts"

const TEST_TIMEOUT = 60_000
const hex = () => randomBytes(16).toString("hex")
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

interface Entry {
  readonly user: "alice" | "bob"
  readonly ref: string
  readonly path: string
  readonly tags: string
}

const entries: ReadonlyArray<Entry> = [
  { user: "alice", ref: "op://Vault/alice-db/password", path: "db_password", tags: "" },
  { user: "alice", ref: "op://Vault/alice-api/token", path: "api/token", tags: "web" },
  { user: "alice", ref: "op://Vault/alice-cache/key", path: "cache/key", tags: "cache" },
  { user: "bob", ref: "op://Vault/bob-db/password", path: "db_password", tags: "" },
  { user: "bob", ref: "op://Vault/bob-api/token", path: "api/token", tags: "web" }
]
/** Many entries make a run slow enough to signal it repeatedly (SIGUSR1 case). */
const bulk: ReadonlyArray<Entry> = Array.from({ length: 500 }, (_, i) => ({
  user: "alice", ref: `op://Vault/bulk-${i}/password`, path: `bulk/f${i}`, tags: "bulk"
}))
const secret = new Map([...entries, ...bulk].map((entry) => [entry.ref, hex()]))
const valueOf = (entry: Entry) => secret.get(entry.ref) ?? ""
const of = (user: Entry["user"]) => entries.filter((entry) => entry.user === user)

/** Collects a spawned child's output and how it ended. */
const finished = (child: ChildProcess): Promise<Result> =>
  new Promise((resolve) => {
    let stdout = "", stderr = ""
    child.stdout?.setEncoding("utf8").on("data", (data: string) => (stdout += data))
    child.stderr?.setEncoding("utf8").on("data", (data: string) => (stderr += data))
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr }))
  })

const until = async (what: string, condition: () => boolean, timeout = 10_000) => {
  for (const start = Date.now(); !condition(); await new Promise((resolve) => setTimeout(resolve, 10))) {
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`)
  }
}

/** Every entry under `dir` (relative path -> type, mode, owner, inode, mtime, content hash). */
const snapshot = (dir: string): Record<string, string> =>
  Object.fromEntries(
    (existsSync(dir) ? readdirSync(dir, { recursive: true, encoding: "utf8" }) : []).sort().map((name) => {
      const stat = lstatSync(join(dir, name))
      const content = stat.isFile() ? sha256(readFileSync(join(dir, name))) : ""
      return [name, `${stat.mode.toString(8)} ${stat.uid}:${stat.gid} ${stat.ino} ${stat.mtimeMs} ${content}`]
    })
  )

/** Regular files under `dir`, relative, sorted. */
const filesUnder = (dir: string): Array<string> =>
  existsSync(dir)
    ? readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((name) => statSync(join(dir, name)).isFile()).sort()
    : []

/** Inodes of listening TCP sockets (IPv4 and IPv6) with their ports. */
const listeningSockets = (): Map<string, number> => {
  const listening = new Map<string, number>()
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"].filter((file) => existsSync(file))) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields[3] === "0A") listening.set(fields[9] ?? "", parseInt(fields[1]?.split(":").pop() ?? "0", 16))
    }
  }
  return listening
}

const socketInodes = (pid: number): Array<string> =>
  readdirSync(`/proc/${pid}/fd`).flatMap((fd) => {
    try {
      return /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1] ?? []
    } catch {
      return [] // closed meanwhile
    }
  })

/** Real, effective, saved and filesystem uids of a process, from the kernel. */
const uidsOf = (pid: number): string => /^Uid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]?.trim() ?? ""

describe.skipIf(!isRoot)("the set-user-ID single executable keeps the security contract", () => {
  const inst = new Installation()
  let alice: Account, bob: Account
  /** Root-owned 1777: attacker code running as the caller or as svc could leave its marker here. */
  let world: string
  /** Alice's own 0755 directory with her planted files, readable by the service account. */
  let attack: string
  let credential: string
  const mapfileOf = (list: ReadonlyArray<Entry>) =>
    list.map((entry) => `${inst.user(entry.user).name} ${entry.ref} ${entry.path} ${entry.tags}`.trim()).join("\n") + "\n"

  /** The checks that hold after every run. */
  const check = (result: Result, status: number | null, label = "run") => {
    expect(result.status, `${label}: exit status (signal ${result.signal}); stderr: ${result.stderr}`).toBe(status)
    // The executable itself is svc:svc by design (contract point 1); nothing else may be svc's.
    expect(inst.filesOwnedBySvc(), `${label}: files owned by the service account`).toEqual([inst.bin, join(inst.etc, "api"), join(inst.etc, "vault.json")].sort())
    const output = result.stdout + result.stderr
    expect(output.includes(credential), `${label}: the output shows the credential`).toBe(false)
    const shown = [...secret.entries()].filter(([, value]) => output.includes(value)).map(([ref]) => ref)
    expect(shown, `${label}: the output shows secret values`).toEqual([])
    return result
  }
  /** A directory of alice's, mode 0755 (so the service account could read what she plants). */
  const aliceDir = (dir: string) => {
    mkdirSync(dir, { recursive: true })
    chmodSync(dir, 0o755)
    chownSync(dir, alice.uid, alice.gid)
    return dir
  }
  const fetchAs = (user: Account, dir: string, ...extra: Array<string>) => inst.run(user, ["--secrets-dir", dir, ...extra])
  const expectSecrets = (user: Account, dir: string, list: ReadonlyArray<Entry>) => {
    expect(filesUnder(dir)).toEqual(list.map((entry) => entry.path).sort())
    for (const entry of list) {
      const stat = statSync(join(dir, entry.path))
      expect({ mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid }, entry.path).toEqual({ mode: 0o600, uid: user.uid, gid: user.gid })
      expect(readFileSync(join(dir, entry.path), "utf8"), entry.path).toBe(valueOf(entry))
    }
  }
  /** Files anywhere under the installation (bob's home and the config excepted) holding one of bob's values. */
  const bobValuesOutsideHisHome = () =>
    filesUnder(inst.tmp)
      .filter((name) => !name.startsWith("etc/") && !name.startsWith("bin/") && !join(inst.tmp, name).startsWith(inst.home(bob) + "/"))
      .filter((name) => of("bob").some((entry) => readFileSync(join(inst.tmp, name), "utf8").includes(valueOf(entry))))

  beforeAll(async () => {
    await inst.create(["alice", "bob"])
    alice = inst.user("alice")
    bob = inst.user("bob")
    inst.writeVault(Object.fromEntries(secret))
    inst.writeMapfile(mapfileOf(entries))
    credential = readFileSync(join(inst.etc, "api"), "utf8").trim()
    world = join(inst.tmp, "world")
    mkdirSync(world)
    chmodSync(world, 0o1777)
    attack = aliceDir(join(inst.tmp, "attack"))
  }, 180_000)

  afterAll(() => inst.remove())

  it("writes each caller's selected secrets as that caller, mode 0600, and touches nothing of another user", () => {
    const mine = inst.secretsDir(alice)
    // bob already has an old copy of his secret: alice's runs must leave it exactly as it is.
    mkdirSync(inst.secretsDir(bob), { mode: 0o700 })
    chownSync(inst.secretsDir(bob), bob.uid, bob.gid)
    writeOwned(join(inst.secretsDir(bob), "db_password"), "stale", bob, 0o600)
    const bobBefore = snapshot(inst.home(bob))

    const tagged = check(fetchAs(alice, mine, "--tags", "web"), 0, "alice --tags web")
    expect(tagged.stdout).toBe(`Successfully wrote secret to ${join(mine, "api/token")}\n`)
    expectSecrets(alice, mine, of("alice").filter((entry) => entry.tags === "web"))

    check(fetchAs(alice, mine), 0, "alice, everything")
    expectSecrets(alice, mine, of("alice"))
    for (const dir of [mine, join(mine, "api"), join(mine, "cache")]) {
      expect(statSync(dir)).toMatchObject({ uid: alice.uid, gid: alice.gid, mode: 0o40700 })
    }
    expect(snapshot(inst.home(bob))).toEqual(bobBefore)

    const aliceBefore = snapshot(inst.home(alice))
    check(fetchAs(bob, inst.secretsDir(bob)), 0, "bob")
    expectSecrets(bob, inst.secretsDir(bob), of("bob"))
    expect(snapshot(inst.home(alice))).toEqual(aliceBefore)
  }, TEST_TIMEOUT)

  it("refuses the path overrides while set-user-ID (exit 77) before reading alice's own mapfile naming bob's secrets", () => {
    const ownMapfile = join(attack, "mapfile")
    writeOwned(ownMapfile, of("bob").map((entry) => `${alice.name} ${entry.ref} ${entry.path}`).join("\n") + "\n", alice, 0o644)
    const ownApi = join(attack, "api")
    writeOwned(ownApi, `${credential}\n`, alice, 0o644)
    const out = join(inst.home(alice), "override-secrets")
    const attempts: Array<{ named: string; args?: Array<string>; env?: Record<string, string> }> = [
      { named: "--map-file-path", args: ["--map-file-path", ownMapfile] },
      { named: "--api-key-path", args: ["--api-key-path", ownApi] },
      { named: "OP_MAP_FILE_PATH", env: { OP_MAP_FILE_PATH: ownMapfile } },
      { named: "OP_API_KEY_PATH", env: { OP_API_KEY_PATH: ownApi } },
      { named: "--map-file-path", args: ["-map-file-path", ownMapfile, "-api-key-path", ownApi] } // the Go tool's spelling
    ]
    for (const { named, args = [], env = {} } of attempts) {
      const result = check(inst.run(alice, ["--secrets-dir", out, ...args], { env }), 77, named)
      expect(result.stderr).toContain(`${named}`)
      expect(result.stderr).toContain("is refused when running set-user-ID")
      expect(existsSync(out), `${named}: secrets directory created`).toBe(false)
    }
    expect(bobValuesOutsideHisHome()).toEqual([])
  }, TEST_TIMEOUT)

  describe("runs no code an attacker supplies", () => {
    const marker = (label: string) => `require("fs").writeFileSync(${JSON.stringify(join(world, "marker"))} + "-" + ${JSON.stringify(label)}, "x")\n`
    const modules = ["effect", "koffi", "@1password/sdk", "@1password/sdk-core", "@effect/cli", "@effect/platform", "@effect/platform-node"]
    /** Packages named like the project's dependencies, each writing a marker when loaded; owned by alice, world-readable. */
    const plant = (dir: string, label: string) => {
      aliceDir(dir)
      for (const name of modules) {
        if (name.includes("/")) aliceDir(join(dir, name.split("/")[0] ?? ""))
        aliceDir(join(dir, name))
        writeOwned(join(dir, name, "package.json"), JSON.stringify({ name, main: "index.js" }), alice, 0o644)
        writeOwned(join(dir, name, "index.js"), marker(`${label}-${name.replace("/", "_")}`), alice, 0o644)
      }
    }
    let script: string

    beforeAll(() => {
      script = join(attack, "x.js")
      writeOwned(script, marker("require"), alice, 0o644)
      plant(join(attack, "node_modules"), "cwd")
      plant(join(attack, "node_path"), "NODE_PATH")
      aliceDir(join(attack, "home"))
      plant(join(attack, "home", ".node_modules"), "HOME")
      plant(join(attack, "home", ".node_libraries"), "HOME")
      expect(existsSync("/tmp/node_modules"), "/tmp/node_modules already exists").toBe(false)
      inst.track("/tmp/node_modules")
      plant("/tmp/node_modules", "tmp")
    })

    const attempts: ReadonlyArray<{ name: string; status: number; args?: () => Array<string>; env?: () => Record<string, string>; cwd?: () => string }> = [
      { name: "refuses -e <code> on the command line as a usage error (64)", status: 64, args: () => ["-e", marker("eval")] },
      { name: "refuses --require <script> on the command line as a usage error (64)", status: 64, args: () => ["--require", script] },
      { name: "ignores NODE_OPTIONS=--require <script>", status: 0, env: () => ({ NODE_OPTIONS: `--require ${script}` }) },
      { name: "ignores NODE_PATH naming planted packages", status: 0, env: () => ({ NODE_PATH: join(attack, "node_path") }) },
      { name: "ignores HOME with planted ~/.node_modules and ~/.node_libraries", status: 0, env: () => ({ HOME: join(attack, "home") }) },
      { name: "ignores node_modules in the working directory", status: 0, cwd: () => attack },
      { name: "ignores node_modules in /tmp", status: 0, cwd: () => "/tmp" }
    ]

    it("control: a plain Node run as alice does load every planted file", () => {
      const load = `for (const m of ${JSON.stringify(modules)}) require(m)`
      // From "/" so that /tmp/node_modules (an ancestor of the working directory) does not win.
      const runs = [
        inst.runCommandAs(alice, process.execPath, ["--require", script, "-e", ""]),
        inst.runCommandAs(alice, process.execPath, ["-e", load], { cwd: attack }),
        inst.runCommandAs(alice, process.execPath, ["-e", load], { cwd: "/", env: { NODE_PATH: join(attack, "node_path") } }),
        inst.runCommandAs(alice, process.execPath, ["-e", load], { cwd: "/", env: { HOME: join(attack, "home") } }),
        inst.runCommandAs(alice, process.execPath, ["-e", load], { cwd: "/tmp" })
      ]
      try {
        expect(runs.map((run) => run.status), runs.map((run) => run.stderr).join("")).toEqual([0, 0, 0, 0, 0])
        const labels = ["cwd", "NODE_PATH", "HOME", "tmp"].flatMap((label) => modules.map((name) => `marker-${label}-${name.replace("/", "_")}`))
        expect(readdirSync(world).sort()).toEqual(["marker-require", ...labels].sort())
      } finally {
        for (const name of readdirSync(world)) rmSync(join(world, name))
      }
    }, TEST_TIMEOUT)

    for (const [index, attempt] of attempts.entries()) {
      it(`${attempt.name}, and never loads the attacker's code`, () => {
        const out = join(inst.home(alice), `inject-${index}`)
        const args = [...(attempt.args?.() ?? []), "--secrets-dir", out]
        check(inst.run(alice, args, { env: attempt.env?.() ?? {}, ...(attempt.cwd ? { cwd: attempt.cwd() } : {}) }), attempt.status, attempt.name)
        expect(readdirSync(world), `${attempt.name}: attacker code ran`).toEqual([])
        if (attempt.status === 0) expectSecrets(alice, out, of("alice"))
        else expect(existsSync(out)).toBe(false)
      }, TEST_TIMEOUT)
    }
  })

  /** One run of the bulk selection with SIGUSR1 sent every 20 ms, the first `delay` ms after the exec. */
  const runUnderSigusr1 = async (out: string, delay: number) => {
    const child = inst.spawn(alice, ["--secrets-dir", out, "--tags", "bulk"])
    const done = finished(child)
    const pid = child.pid ?? -1
    let execed = 0, last = 0, sent = 0, sentAfterDrop = 0, port9229 = false, ownListener = false
    const timer = setInterval(() => {
      try {
        if (execed === 0 && readlinkSync(`/proc/${pid}/exe`) === inst.bin) execed = Date.now()
        if (execed === 0 || Date.now() - execed < delay || Date.now() - last < 20) return
        const dropped = uidsOf(pid) === Array(4).fill(alice.uid).join("\t")
        process.kill(pid, "SIGUSR1")
        last = Date.now()
        sent++
        if (dropped) sentAfterDrop++
        const listening = listeningSockets()
        port9229 ||= [...listening.values()].includes(9229)
        ownListener ||= socketInodes(pid).some((inode) => listening.has(inode))
      } catch {
        // the process exited between two looks
      }
    }, 1)
    const result = await done
    clearInterval(timer)
    return { result, sent, sentAfterDrop, port9229, ownListener }
  }

  it("never opens the inspector on SIGUSR1 (sent every 20 ms from the exec on) and never leaves a partial write", async () => {
    inst.writeMapfile(mapfileOf([...entries, ...bulk]))
    try {
      expect([...listeningSockets().values()], "something already listens on 9229").not.toContain(9229)
      // Control: the detector sees the inspector a plain Node opens on SIGUSR1 (on a free port, so
      // that 9229 stays free for the real check).
      const plain = spawn(process.execPath, ["--inspect-port=0", "-e", "console.log('ready'); setTimeout(() => {}, 10000)"], { stdio: ["ignore", "pipe", "pipe"] })
      const plainDone = finished(plain)
      try {
        await new Promise((resolve) => plain.stdout?.once("data", resolve))
        plain.kill("SIGUSR1")
        await until("a plain Node's inspector", () => socketInodes(plain.pid ?? -1).some((inode) => listeningSockets().has(inode)))
      } finally {
        plain.kill("SIGKILL")
      }
      expect((await plainDone).stderr).toContain("Debugger listening on ws://127.0.0.1:")
      let completedUnderSignals = 0
      // From the exec itself, then from later and later points, so that signals hit start-up, the
      // elevated phase and the run after the drop.
      for (const delay of [0, 10, 25, 50, 100]) {
        const out = join(inst.home(alice), `usr1-${delay}`)
        const run = await runUnderSigusr1(out, delay)
        const label = `SIGUSR1 from ${delay} ms`
        // SIGUSR1's default action is to terminate (before Node blocks it): a killed run is
        // acceptable, an inspector is not.
        check(run.result, run.result.signal === "SIGUSR1" ? null : 0, label)
        expect(run.sent, label).toBeGreaterThanOrEqual(1)
        expect({ port9229: run.port9229, ownListener: run.ownListener }, label).toEqual({ port9229: false, ownListener: false })
        expect(run.result.stdout + run.result.stderr, label).not.toMatch(/Debugger listening|ws:\/\/|inspector/i)
        const files = filesUnder(out)
        expect(files.filter((name) => name.includes(".op-secret-manager.")), label).toEqual([])
        if (run.result.signal === "SIGUSR1") expect(files, label).toEqual([])
        else expectSecrets(alice, out, bulk)
        if (run.result.status === 0 && run.sentAfterDrop > 0) completedUnderSignals++
      }
      expect(completedUnderSignals, "runs that completed while signalled after the drop").toBeGreaterThanOrEqual(1)
    } finally {
      inst.writeMapfile(mapfileOf(entries))
    }
  }, TEST_TIMEOUT)

  describe("refuses each variable Node or libuv reads behind its back (exit 77) before reading anything", () => {
    const mapfile = () => join(inst.etc, "mapfile")
    // A group-writable mapfile fails with 78 once it is read: a 77 proves the refusal came first.
    beforeAll(() => chmodSync(mapfile(), 0o660))
    afterAll(() => chmodSync(mapfile(), 0o640))

    it("control: with the mapfile made group-writable, a plain run stops at reading it (exit 78)", () => {
      const out = join(inst.home(alice), "env-control")
      expect(check(fetchAs(alice, out), 78, "control").stderr).toContain("is writable by group or others")
      expect(existsSync(out)).toBe(false)
    }, TEST_TIMEOUT)

    const refused: ReadonlyArray<[string, string]> = [
      ["UV_USE_IO_URING", "1"], ["NODE_TLS_REJECT_UNAUTHORIZED", "0"], ["NODE_V8_COVERAGE", "<world>/coverage"],
      ["NODE_DEBUG", "fs,module,child_process"], ["NODE_DEBUG_NATIVE", "SEA,fs"], ["NODE_CHANNEL_FD", "3"], ["NODE_UNIQUE_ID", "1"],
      ["UV_THREADPOOL_SIZE", "1"], ["ICU_DATA", "/tmp"], ["ICU_TIMEZONE_FILES_DIR", "/tmp"]
    ]
    it.each(refused)("%s=%s", (name, setting) => {
      const value = setting.replace("<world>", world)
      const out = join(inst.home(alice), `env-${name}`)
      try {
        const result = inst.run(alice, ["--secrets-dir", out], { env: { [name]: value } })
        // Node writes coverage at exit with the ids it then has; svc may write here, so any write shows.
        if (name === "NODE_V8_COVERAGE") expect(snapshot(value), "coverage written at exit").toEqual({})
        check(result, 77, name)
        expect(result.stderr).toBe(`op-secret-manager: error: refusing to run set-user-ID with ${name} in the environment; unset it\n`)
        expect(existsSync(out), `${name}: secrets directory created`).toBe(false)
      } finally {
        rmSync(join(world, "coverage"), { recursive: true, force: true })
      }
    }, TEST_TIMEOUT)
  })

  it("proves the drop under -v: every id moved from svc to alice, svc cannot be regained, async fs is denied, not dumpable", () => {
    const result = check(fetchAs(alice, inst.secretsDir(alice), "-v"), 0, "-v")
    const line = /privileges: uid (\d+)->(\d+) gid (\d+)->(\d+); (\d+) threads verified; regain: (\S+); async open: (\S+); dumpable: (\d+); core limit: (\d+)\n/
      .exec(result.stderr)
    expect(line, result.stderr).not.toBeNull()
    const [, fromUid, toUid, fromGid, toGid, threads, regain, asyncOpen, dumpable, core] = (line ?? []).map(String)
    expect({ fromUid, toUid, fromGid, toGid, regain, asyncOpen, dumpable, core }).toEqual({
      fromUid: String(inst.svc.uid), toUid: String(alice.uid), fromGid: String(inst.svc.gid), toGid: String(alice.gid),
      regain: "EPERM", asyncOpen: "EACCES", dumpable: "0", core: "0"
    })
    expect(Number(threads)).toBeGreaterThanOrEqual(2) // the main thread and libuv's pool at least
  }, TEST_TIMEOUT)

  it("keeps a waiting run after the drop out of alice's reach: no ptrace, no /proc environ, mem or fd; SIGTERM ends it with 143", async () => {
    const out = join(inst.home(alice), "slow")
    const lock = join(inst.home(alice), "op-secret-manager.lock") // beside the secrets directory
    const asAlice = ["--reuid", String(alice.uid), "--regid", String(alice.gid), "--clear-groups", "--"]
    // Detached: each is its own process group, killed as a whole (flock forks its command).
    const holder = spawn("/usr/bin/setpriv", [...asAlice, "flock", lock, "sh", "-c", "echo locked; exec sleep 30"], { detached: true, stdio: ["ignore", "pipe", "ignore"] })
    const control = spawn("/usr/bin/setpriv", [...asAlice, "sleep", "30"], { detached: true, stdio: "ignore", env: { PATH: "/usr/bin:/bin", CONTROL: "1" } })
    let child: ChildProcess | undefined
    try {
      await new Promise((resolve) => holder.stdout?.once("data", resolve))
      child = inst.spawn(alice, ["--serialize", "--secrets-dir", out, "-v"])
      const done = finished(child)
      const pid = child.pid ?? -1
      // setpriv execs the executable, so this pid is the executable's. Wait until it has dropped
      // and holds the lock file open (it is then polling flock, after the drop).
      await until("the run to wait on the lock after the drop", () => {
        try {
          return uidsOf(pid) === Array(4).fill(alice.uid).join("\t") &&
            readdirSync(`/proc/${pid}/fd`).some((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`) === lock)
        } catch {
          return false
        }
      })
      const environ = (target: number) => inst.runCommandAs(alice, "cat", [`/proc/${target}/environ`])
      const fds = (target: number) => inst.runCommandAs(alice, "ls", ["-l", `/proc/${target}/fd/`])
      // Control: alice's own ordinary process is open to the same commands.
      const open = [environ(control.pid ?? -1), fds(control.pid ?? -1)]
      expect(open.map((result) => result.status), open.map((result) => result.stderr).join("")).toEqual([0, 0])
      expect(open[0]?.stdout).toContain("CONTROL=1")

      const mapped = /^([0-9a-f]+)-/.exec(readFileSync(`/proc/${pid}/maps`, "utf8"))?.[1] ?? "0"
      const denied = {
        environ: environ(pid),
        fd: fds(pid),
        mem: inst.runCommandAs(alice, "dd", [`if=/proc/${pid}/mem`, "bs=64", "count=1", `skip=${parseInt(mapped, 16)}`, "iflag=skip_bytes", "status=none"]),
        // PTRACE_ATTACH (x86_64 syscall 101, request 16) straight from perl, which Debian always has.
        ptrace: inst.runCommandAs(alice, "perl", ["-e", 'syscall(101, 16, $ARGV[0] + 0, 0, 0) == 0 or die "$!\\n"', String(pid)])
      }
      for (const [what, result] of Object.entries(denied)) {
        expect(result.status, `${what}: ${result.stdout}${result.stderr}`).not.toBe(0)
        expect(result.stderr, what).toMatch(what === "ptrace" ? /Operation not permitted/ : /Permission denied/)
        expect(result.stdout, what).toBe("")
      }
      for (const [tool, args] of [["strace", ["-p", String(pid)]], ["gdb", ["-batch", "-p", String(pid)]]] as const) {
        if (!existsSync(`/usr/bin/${tool}`)) continue // optional tools; the perl attach above always runs
        const result = inst.runCommandAs(alice, tool, args, { timeout: 10_000 })
        expect(result.status, `${tool}: ${result.stderr}`).not.toBe(0)
        expect(result.stdout + result.stderr, tool).toMatch(/Operation not permitted/)
      }
      expect(uidsOf(pid), "the run survived the attempts").toBe(Array(4).fill(alice.uid).join("\t"))

      process.kill(pid, "SIGTERM")
      const result = check(await done, 143, "SIGTERM while waiting")
      expect(result.stderr).toMatch(/privileges: uid \d+->\d+/)
      expect(existsSync(out), "written although interrupted").toBe(false)
    } finally {
      if (child?.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
      for (const { pid } of [holder, control]) {
        try {
          if (pid !== undefined) process.kill(-pid, "SIGKILL") // the whole group: flock and its sleep
        } catch {
          // already gone
        }
      }
    }
  }, TEST_TIMEOUT)

  it("cleans up only alice's selected files (with and without --tags), idempotently, and leaves bob's untouched", () => {
    const mine = inst.secretsDir(alice)
    check(fetchAs(alice, mine), 0, "fetch before cleanup")
    writeOwned(join(mine, "notes.txt"), "not in the mapfile", alice, 0o600)
    check(fetchAs(bob, inst.secretsDir(bob)), 0, "bob's fetch")
    const bobBefore = snapshot(inst.home(bob))

    const web = check(fetchAs(alice, mine, "--cleanup", "--tags", "web"), 0, "cleanup --tags web")
    expect(web.stdout).toBe(`Removed ${join(mine, "api/token")}\nCleanup completed successfully\n`)
    expect(filesUnder(mine)).toEqual(["cache/key", "db_password", "notes.txt"])
    expect(check(fetchAs(alice, mine, "--cleanup", "--tags", "web"), 0, "again, --tags web").stdout).toBe("Cleanup completed successfully\n")

    check(fetchAs(alice, mine, "--cleanup"), 0, "cleanup")
    expect(filesUnder(mine)).toEqual(["notes.txt"])
    expect(existsSync(join(mine, "api")), "directories are kept").toBe(true)
    expect(check(fetchAs(alice, mine, "--cleanup"), 0, "again").stdout).toBe("Cleanup completed successfully\n")
    expect(filesUnder(mine)).toEqual(["notes.txt"])
    expect(snapshot(inst.home(bob))).toEqual(bobBefore)
  }, TEST_TIMEOUT)
})
