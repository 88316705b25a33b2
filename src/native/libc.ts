/**
 * The only place that calls libc directly. Node has no setresuid/getresuid/prctl/setrlimit/flock,
 * and its own process.setuid only changes the effective id of an unprivileged process (the saved
 * id stays at the service account, so the "drop" could be undone).
 *
 * koffi's JS wrapper locates its addon with dynamic requires that a bundler cannot follow, so the
 * addon is loaded directly: embedded in the single executable, beside the bundle in a build, from
 * the package in development.
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type * as Koffi from "koffi"

declare const __OSM_BUNDLED__: boolean | undefined

export interface Ids {
  readonly real: number
  readonly effective: number
  readonly saved: number
}

export interface Libc {
  readonly getresuid: () => Ids
  readonly getresgid: () => Ids
  /** setresgid(2) through glibc, which applies it to every thread of the process. Returns errno or 0. */
  readonly setresgid: (real: number, effective: number, saved: number) => number
  readonly setresuid: (real: number, effective: number, saved: number) => number
  readonly setNonDumpable: () => number
  readonly isDumpable: () => boolean
  readonly disableCoreDumps: () => number
  readonly coreDumpLimit: () => bigint
  /** flock(2); returns errno or 0. */
  readonly flock: (fd: number, operation: number) => number
  /** getpwnam(3) through NSS (files, LDAP, SSSD...): whether a user name exists on this host. */
  readonly userExists: (name: string) => boolean
  /** getpwuid(3)/getpwnam(3): a passwd entry, or undefined. */
  readonly passwdByUid: (uid: number) => Passwd | undefined
  readonly passwdByName: (name: string) => Passwd | undefined
  /** _exit(2): ends the process without Node's exit hooks (which may write files). */
  readonly exitImmediately: (code: number) => never
}

export interface Passwd {
  readonly name: string
  readonly uid: number
  readonly gid: number
  readonly home: string
  readonly shell: string
}

/** The errno name of a failed node:fs call (ENOENT, EACCES, ...); EIO when it carries none. */
export const errnoCode = (error: unknown): string =>
  typeof error === "object" && error !== null && "code" in error && typeof error.code === "string" ? error.code : "EIO"

export const LOCK_EX = 2
export const LOCK_NB = 4
export const EPERM = 1
export const EINTR = 4
export const EWOULDBLOCK = 11

const PR_SET_DUMPABLE = 4
const PR_GET_DUMPABLE = 3
const RLIMIT_CORE = 4

const O_TMPFILE = 0o20000000 | fs.constants.O_DIRECTORY

/**
 * In the single executable the addon is an embedded asset. It must not be loaded from any path a
 * non-root user could write, so it goes into an anonymous O_TMPFILE inode (no name, gone on close)
 * and is opened through /proc/self/fd/N. Directories mounted noexec refuse the mapping, so a few
 * candidates are tried.
 */
const loadEmbedded = (module: { exports: unknown }) => {
  const raw = process.getBuiltinModule("node:sea").getRawAsset("koffi.node")
  const bytes = typeof raw === "string" ? Buffer.from(raw, "latin1") : new Uint8Array(raw)
  const failures: Array<string> = []
  for (const dir of ["/dev/shm", "/tmp", "/var/tmp", "/run"]) {
    let fd: number
    try {
      fd = fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o700)
    } catch (error) {
      failures.push(`${dir}: ${String(error)}`)
      continue
    }
    try {
      for (let offset = 0; offset < bytes.length;) offset += fs.writeSync(fd, bytes, offset)
      process.dlopen(module, `/proc/self/fd/${fd}`)
      return
    } catch (error) {
      failures.push(`${dir}: ${String(error)}`)
    } finally {
      fs.closeSync(fd)
    }
  }
  throw new Error(`cannot load the embedded native addon (${failures.join("; ")})`)
}

const addonPath = (): string =>
  typeof __OSM_BUNDLED__ !== "undefined" && __OSM_BUNDLED__
    ? join(dirname(fileURLToPath(import.meta.url)), "koffi.node")
    : createRequire(import.meta.url).resolve("@koromix/koffi-linux-x64/linux_x64/koffi.node")

const loadKoffi = (): typeof Koffi => {
  const module: { exports: unknown } = { exports: {} }
  // node:sea is looked up at run time: the executable's start-up snapshot must not hold it.
  if (process.getBuiltinModule("node:sea").isSea()) loadEmbedded(module)
  else process.dlopen(module, addonPath())
  // FFI boundary: the addon's exports are exactly what koffi's own typings describe.
  return module.exports as typeof Koffi
}

const bind = (): Libc => {
  const koffi = loadKoffi()
  const libc = koffi.load("libc.so.6")
  const rlimit = koffi.struct("osm_rlimit", { cur: "uint64_t", max: "uint64_t" })
  const getresuid = libc.func("int getresuid(_Out_ uint32_t *r, _Out_ uint32_t *e, _Out_ uint32_t *s)")
  const getresgid = libc.func("int getresgid(_Out_ uint32_t *r, _Out_ uint32_t *e, _Out_ uint32_t *s)")
  const setresuid = libc.func("int setresuid(uint32_t r, uint32_t e, uint32_t s)")
  const setresgid = libc.func("int setresgid(uint32_t r, uint32_t e, uint32_t s)")
  const prctl = libc.func("int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)")
  const setrlimit = libc.func("setrlimit", "int", ["int", koffi.pointer(rlimit)])
  const getrlimit = libc.func("getrlimit", "int", ["int", koffi.out(koffi.pointer(rlimit))])
  const flock = libc.func("int flock(int fd, int operation)")
  const exit = libc.func("void _exit(int status)")
  const passwd = koffi.struct("osm_passwd", {
    name: "const char *",
    passwd: "const char *",
    uid: "uint32_t",
    gid: "uint32_t",
    gecos: "const char *",
    dir: "const char *",
    shell: "const char *"
  })
  const getpwnam = libc.func("getpwnam", koffi.pointer(passwd), ["const char *"])
  const getpwuid = libc.func("getpwuid", koffi.pointer(passwd), ["uint32_t"])
  const decodePasswd = (pointer: unknown): Passwd | undefined => {
    if (pointer === null) return undefined
    const entry: { name?: string; uid?: number; gid?: number; dir?: string; shell?: string } = koffi.decode(pointer, passwd)
    return { name: entry.name ?? "", uid: entry.uid ?? -1, gid: entry.gid ?? -1, home: entry.dir ?? "", shell: entry.shell ?? "" }
  }

  const errnoOf = (result: number): number => (result === 0 ? 0 : koffi.errno())
  const ids = (call: (r: Array<number>, e: Array<number>, s: Array<number>) => number): Ids => {
    const r = [0], e = [0], s = [0]
    if (call(r, e, s) !== 0) throw new Error(`getres*id failed with errno ${koffi.errno()}`)
    return { real: r[0] ?? -1, effective: e[0] ?? -1, saved: s[0] ?? -1 }
  }
  return {
    getresuid: () => ids(getresuid),
    getresgid: () => ids(getresgid),
    setresuid: (r, e, s) => errnoOf(setresuid(r, e, s)),
    setresgid: (r, e, s) => errnoOf(setresgid(r, e, s)),
    setNonDumpable: () => errnoOf(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)),
    isDumpable: () => prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) !== 0,
    disableCoreDumps: () => errnoOf(setrlimit(RLIMIT_CORE, { cur: 0, max: 0 })),
    coreDumpLimit: () => {
      const out: { cur?: number | bigint } = {}
      if (getrlimit(RLIMIT_CORE, out) !== 0) throw new Error(`getrlimit failed with errno ${koffi.errno()}`)
      return BigInt(out.cur ?? -1)
    },
    flock: (fd, operation) => errnoOf(flock(fd, operation)),
    userExists: (name) => getpwnam(name) !== null,
    passwdByUid: (uid) => decodePasswd(getpwuid(uid)),
    passwdByName: (name) => decodePasswd(getpwnam(name)),
    exitImmediately: (code) => {
      exit(code)
      throw new Error("_exit returned")
    }
  }
}

let bound: Libc | undefined

/** Binds libc on first use: commands that never need it (--version, --help) never load the addon. */
export const libc = (): Libc => (bound ??= bind())
