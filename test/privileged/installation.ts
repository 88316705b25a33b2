/**
 * A real installation of the single executable for the privileged suites: throwaway users with a
 * unique prefix (a service account and callers), the executable built for a temporary config
 * directory and installed owner svc:svc mode 6755 in a root-owned directory, a vault-file backend,
 * and helpers that run it as a caller (setpriv changes every id to the caller's; the kernel's
 * set-user-ID exec does the rest). `remove()` undoes everything it recorded, even after a partial set-up.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { repoRoot } from "../fixtures.ts"

export interface Account {
  readonly name: string
  readonly uid: number
  readonly gid: number
}

export interface Result {
  readonly status: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

export interface RunOptions {
  readonly env?: Record<string, string>
  readonly timeout?: number
  readonly cwd?: string
}

const SETPRIV = "/usr/bin/setpriv"
const RUN_TIMEOUT = 30_000

export const isRoot = process.getuid?.() === 0

const sh = (command: string, args: ReadonlyArray<string>): string => {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: RUN_TIMEOUT })
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${result.status}): ${result.stderr}`)
  return result.stdout.trim()
}

export const writeOwned = (path: string, content: string | Uint8Array, owner: Account | { uid: number; gid: number }, mode: number) => {
  writeFileSync(path, content, { mode })
  chownSync(path, owner.uid, owner.gid)
  chmodSync(path, mode)
}

const root: Account = { name: "root", uid: 0, gid: 0 }

export class Installation {
  readonly prefix = "osm" + Array.from(randomBytes(6), (b) => String.fromCharCode(97 + (b % 26))).join("")
  private readonly createdUsers: Array<string> = []
  private readonly createdPaths: Array<string> = []
  readonly users = new Map<string, Account>()
  svc!: Account
  tmp!: string
  etc!: string
  bin!: string

  /** The caller named `name` when created (e.g. "alice"). */
  user(name: string): Account {
    const account = this.users.get(name)
    if (account === undefined) throw new Error(`no test user ${name}`)
    return account
  }

  home(user: Account): string {
    return join(this.tmp, "home", user.name)
  }

  secretsDir(user: Account): string {
    return join(this.home(user), "secrets")
  }

  /** Records a path to remove at the end (for things a test creates outside `tmp`). */
  track(path: string) {
    this.createdPaths.push(path)
  }

  private addUser(suffix: string, system: boolean): Account {
    const name = this.prefix + suffix
    this.createdUsers.push(name)
    sh("useradd", system ? ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name] : ["-M", "-s", "/bin/sh", name])
    return { name, uid: Number(sh("id", ["-u", name])), gid: Number(sh("id", ["-g", name])) }
  }

  async create(callers: ReadonlyArray<string>): Promise<this> {
    if (!existsSync(SETPRIV)) throw new Error(`${SETPRIV} is missing: install util-linux`)
    try {
      this.tmp = mkdtempSync("/tmp/osm-sea-")
      this.createdPaths.push(this.tmp)
      chmodSync(this.tmp, 0o755)
      const options = sh("findmnt", ["-no", "OPTIONS", "--target", this.tmp])
      if (options.split(",").includes("nosuid")) throw new Error(`${this.tmp} is on a nosuid mount: set-user-ID cannot be tested there`)
      this.svc = this.addUser("svc", true)
      for (const name of callers) this.users.set(name, this.addUser(name, false))

      this.etc = join(this.tmp, "etc")
      mkdirSync(this.etc, { mode: 0o755 })
      mkdirSync(join(this.tmp, "home"), { mode: 0o755 })
      for (const user of this.users.values()) {
        mkdirSync(this.home(user), { mode: 0o700 })
        chownSync(this.home(user), user.uid, user.gid)
      }
      const { buildSea } = (await import(pathToFileURL(join(repoRoot, "scripts/build.mjs")).href)) as {
        buildSea: (options: { sysconfdir: string; outdir: string }) => Promise<string>
      }
      const built = await buildSea({ sysconfdir: this.etc, outdir: join(this.tmp, "build") })
      const binDir = join(this.tmp, "bin")
      mkdirSync(binDir, { mode: 0o755 })
      this.bin = join(binDir, "op-secret-manager")
      copyFileSync(built, this.bin)
      rmSync(join(this.tmp, "build"), { recursive: true, force: true })
      chownSync(this.bin, this.svc.uid, this.svc.gid)
      chmodSync(this.bin, 0o6755)
      return this
    } catch (error) {
      this.remove()
      throw error
    }
  }

  /** The credential (a file: vault reference) and the vault, both svc:svc 0600. */
  writeVault(vault: Record<string, string>) {
    const path = join(this.etc, "vault.json")
    writeOwned(path, JSON.stringify(vault), this.svc, 0o600)
    writeOwned(join(this.etc, "api"), `file:${path}\n`, this.svc, 0o600)
  }

  /** The mapfile, root:svc 0640 as installed. */
  writeMapfile(text: string) {
    writeOwned(join(this.etc, "mapfile"), text, { uid: root.uid, gid: this.svc.gid }, 0o640)
  }

  private argv(caller: Account, args: ReadonlyArray<string>): Array<string> {
    return ["--reuid", String(caller.uid), "--regid", String(caller.gid), "--clear-groups", "--", this.bin, ...args]
  }

  /** The full command line that runs the installed executable as `caller` (for the benchmark). */
  commandFor(caller: Account, args: ReadonlyArray<string>): { argv: Array<string>; env: Record<string, string>; cwd: string } {
    return { argv: [SETPRIV, ...this.argv(caller, args)], env: { PATH: "/usr/bin:/bin" }, cwd: this.tmp }
  }

  /** Runs the installed executable as `caller`, with only PATH (and `env`) in the environment. */
  run(caller: Account, args: ReadonlyArray<string>, options: RunOptions = {}): Result {
    const result = spawnSync(SETPRIV, this.argv(caller, args), {
      encoding: "utf8",
      cwd: options.cwd ?? this.tmp,
      env: { PATH: "/usr/bin:/bin", ...options.env },
      timeout: options.timeout ?? RUN_TIMEOUT
    })
    return { status: result.status, signal: result.signal, stdout: result.stdout ?? "", stderr: result.stderr ?? "" }
  }

  spawn(caller: Account, args: ReadonlyArray<string>, options: RunOptions = {}): ChildProcess {
    return spawn(SETPRIV, this.argv(caller, args), {
      cwd: options.cwd ?? this.tmp,
      env: { PATH: "/usr/bin:/bin", ...options.env },
      stdio: ["ignore", "pipe", "pipe"]
    })
  }

  /** Runs any command as `caller` (for the attacker's side: strace, cat /proc/..., ...). */
  runCommandAs(caller: Account, command: string, args: ReadonlyArray<string>, options: RunOptions = {}): Result {
    const result = spawnSync(SETPRIV, ["--reuid", String(caller.uid), "--regid", String(caller.gid), "--clear-groups", "--", command, ...args], {
      encoding: "utf8",
      cwd: options.cwd ?? this.tmp,
      env: { PATH: "/usr/bin:/bin", ...options.env },
      timeout: options.timeout ?? RUN_TIMEOUT
    })
    return { status: result.status, signal: result.signal, stdout: result.stdout ?? "", stderr: result.stderr ?? "" }
  }

  /** Every path under `tmp` owned by the service account: only bin/op-secret-manager, etc/api and etc/vault.json may be. */
  filesOwnedBySvc(): Array<string> {
    const out = spawnSync("find", [this.tmp, "-user", String(this.svc.uid)], { encoding: "utf8" }).stdout
    return out.split("\n").filter((line) => line.length > 0).sort()
  }

  remove() {
    for (const name of this.createdUsers.splice(0).reverse()) {
      spawnSync("pkill", ["-KILL", "-u", name], { timeout: RUN_TIMEOUT })
      spawnSync("userdel", [name], { timeout: RUN_TIMEOUT })
      spawnSync("groupdel", [name], { timeout: RUN_TIMEOUT })
    }
    for (const path of this.createdPaths.splice(0).reverse()) rmSync(path, { recursive: true, force: true })
  }
}

/** sha256 of a file's bytes, for "this file never changed" checks. */
export const hashOf = (path: string): string => execFileSync("sha256sum", [path], { encoding: "utf8" }).split(" ")[0] ?? ""
