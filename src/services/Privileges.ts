/**
 * Privileges: the only code that runs with the service account's ids, and the only code that can
 * produce the `UnprivilegedCaller` witness that writing files and talking to a backend require.
 *
 * The elevated phase reads the credential file and the mapfile (plus a local vault file named by
 * the credential) through descriptors opened with O_NOFOLLOW and checked with fstat on that same
 * descriptor, inside a scope that closes them before anything else happens. What leaves the scope
 * is plain data. Then every id is dropped to the caller's real ids and the drop is proven: a drop
 * that could be undone is the hole the original tool had.
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as os from "node:os"
import { defaultApiKeyPath, defaultMapFilePath } from "../buildInfo.ts"
import { EPERM, errnoCode, libc } from "../native/libc.ts"
import { isElevated, type ProcessIds, processIds, reduceEnvironment, refusedVariable } from "./ElevatedEnvironment.ts"

// ---------------------------------------------------------------------------------------------
// Errors

/** A protected file is missing or cannot be opened (exit 66). */
export class ProtectedFileMissing extends Data.TaggedError("ProtectedFileMissing")<{
  readonly what: string
  readonly path: string
  readonly reason: string
}> {}

/** A protected file is unsafe to trust: wrong type, owner, mode or size (exit 78). */
export class UnsafeProtectedFile extends Data.TaggedError("UnsafeProtectedFile")<{
  readonly what: string
  readonly path: string
  readonly reason: string
}> {}

/** The credential file holds neither a service account token nor a vault file reference (exit 78). */
export class UnrecognisedCredential extends Data.TaggedError("UnrecognisedCredential")<{
  readonly path: string
  readonly reason: string
}> {}

/** A root caller is served only from a root-owned mapfile nobody else can write (exit 77). */
export class RootRuleViolated extends Data.TaggedError("RootRuleViolated")<{
  readonly path: string
  readonly reason: string
}> {}

/** A path override while elevated: it would let any user supply their own mapfile (exit 77). */
export class OverrideRefused extends Data.TaggedError("OverrideRefused")<{
  readonly source: string
}> {}

/** A variable that Node or libuv reads even when elevated (exit 77). */
export class UnsafeEnvironment extends Data.TaggedError("UnsafeEnvironment")<{
  readonly variable: string
}> {}

/** The drop could not be done or could not be proven (exit 77). Nothing runs after it. */
export class DropFailed extends Data.TaggedError("DropFailed")<{
  readonly reason: string
}> {}

/** The caller's uid has no user name (exit 77): the mapfile is keyed by user names. */
export class UnknownCaller extends Data.TaggedError("UnknownCaller")<{
  readonly uid: number
}> {}

export type ElevatedReadError =
  | ProtectedFileMissing
  | UnsafeProtectedFile
  | UnrecognisedCredential
  | RootRuleViolated
  | OverrideRefused

// ---------------------------------------------------------------------------------------------
// Environment policy (the lists live in ElevatedEnvironment.ts, which the entry point also uses)

/**
 * Run first, before parsing the command line: when elevated, refuse variables that the runtime
 * honours behind our back, then reduce the environment to a short allowlist.
 */
export const enforceElevatedEnvironment: Effect.Effect<void, UnsafeEnvironment> = Effect.suspend(() => {
  if (!isElevated()) return Effect.void
  const variable = refusedVariable(process.env, process.channel !== undefined)
  if (variable !== undefined) return Effect.fail(new UnsafeEnvironment({ variable }))
  reduceEnvironment(process.env)
  return Effect.void
})

// ---------------------------------------------------------------------------------------------
// The elevated read

export interface ProtectedFile {
  readonly path: string
  readonly bytes: Uint8Array
  readonly owner: number
  readonly mode: number
}

export type Credential =
  | { readonly _tag: "ServiceAccount"; readonly path: string; readonly token: Redacted.Redacted<string> }
  | { readonly _tag: "VaultFile"; readonly path: string; readonly contents: Redacted.Redacted<Uint8Array> }

export interface PathOverride {
  readonly path: string
  /** Where it came from, for the refusal message: `--map-file-path` or `OP_MAP_FILE_PATH`. */
  readonly source: string
}

export interface ElevatedReadRequest {
  readonly mapFilePath: Option.Option<PathOverride>
  readonly apiKeyPath: Option.Option<PathOverride>
  /** Fetch needs the credential; cleanup does not read it at all. */
  readonly readCredential: boolean
}

export class ElevatedRead extends Context.Tag("op-secret-manager/ElevatedRead")<ElevatedRead, {
  readonly mapfile: ProtectedFile
  readonly credential: Option.Option<Credential>
  readonly elevated: boolean
}>() {}

const CAPS = { mapfile: 1024 * 1024, credential: 64 * 1024, vault: 16 * 1024 * 1024 } as const

type Kind = keyof typeof CAPS

const describe: Record<Kind, string> = { mapfile: "mapfile", credential: "credential file", vault: "vault file" }

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, "0")

interface ReadRules {
  readonly ids: ProcessIds
  readonly kind: Kind
}

/** Failures of the mapfile check for a root caller are the root rule's (77), not a config error. */
const violation = (rules: ReadRules, path: string, reason: string) =>
  rules.kind === "mapfile" && rules.ids.ruid === 0
    ? new RootRuleViolated({ path, reason })
    : new UnsafeProtectedFile({ what: describe[rules.kind], path, reason })

const openFailure = (rules: ReadRules, path: string, error: unknown) => {
  const code = errnoCode(error)
  if (code === "ELOOP") return violation(rules, path, "is a symbolic link")
  if (code === "ENOENT") return new ProtectedFileMissing({ what: describe[rules.kind], path, reason: "does not exist" })
  if (code === "EACCES" || code === "EPERM") {
    return new ProtectedFileMissing({ what: describe[rules.kind], path, reason: "is not readable (is the executable installed set-user-ID?)" })
  }
  return new ProtectedFileMissing({ what: describe[rules.kind], path, reason: `cannot be opened (${code})` })
}

/** The checks run on the descriptor that is then read, so the file judged is the file used. */
const checkDescriptor = (rules: ReadRules, path: string, stat: fs.Stats) => {
  const { ids, kind } = rules
  if (!stat.isFile()) return violation(rules, path, "is not a regular file")
  if (kind === "mapfile" && ids.ruid === 0) {
    if (stat.uid !== 0) return violation(rules, path, `is owned by uid ${stat.uid}; a root caller needs a root-owned mapfile`)
    if ((stat.mode & 0o022) !== 0) return violation(rules, path, `is writable by group or others (mode ${octal(stat.mode)})`)
  }
  if (stat.uid !== 0 && stat.uid !== ids.euid) {
    return violation(rules, path, `is owned by uid ${stat.uid}; it must belong to root or uid ${ids.euid}`)
  }
  if (kind !== "mapfile" && (stat.mode & 0o077) !== 0) {
    return violation(rules, path, `is accessible by group or others (mode ${octal(stat.mode)}); run: chmod 600 ${path}`)
  }
  if (kind === "mapfile" && (stat.mode & 0o022) !== 0) {
    return violation(rules, path, `is writable by group or others (mode ${octal(stat.mode)}); run: chmod go-w ${path}`)
  }
  if (stat.size > CAPS[kind]) return violation(rules, path, `is larger than ${CAPS[kind]} bytes`)
  return undefined
}

const readDescriptor = (fd: number, cap: number): Uint8Array => {
  const buffer = Buffer.alloc(cap + 1)
  let length = 0
  for (;;) {
    const n = fs.readSync(fd, buffer, length, buffer.length - length, null)
    if (n === 0) break
    length += n
    if (length > cap) break
  }
  return buffer.subarray(0, length)
}

const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK

const readProtected = (path: string, rules: ReadRules) =>
  Effect.acquireRelease(
    Effect.try({ try: () => fs.openSync(path, OPEN_FLAGS), catch: (error) => openFailure(rules, path, error) }),
    (fd) => Effect.sync(() => fs.closeSync(fd))
  ).pipe(
    Effect.flatMap((fd) =>
      Effect.try({
        try: () => {
          const stat = fs.fstatSync(fd)
          const problem = checkDescriptor(rules, path, stat)
          if (problem !== undefined) return Either.left(problem)
          const bytes = readDescriptor(fd, CAPS[rules.kind])
          if (bytes.length > CAPS[rules.kind]) return Either.left(violation(rules, path, `is larger than ${CAPS[rules.kind]} bytes`))
          return Either.right({ path, bytes, owner: stat.uid, mode: stat.mode & 0o7777 } satisfies ProtectedFile)
        },
        catch: (error) => new ProtectedFileMissing({ what: describe[rules.kind], path, reason: `cannot be read (${errnoCode(error)})` })
      }).pipe(Effect.flatMap((result) => result))
    )
  )

const parseCredential = (
  file: ProtectedFile,
  ids: ProcessIds
): Effect.Effect<Credential, ElevatedReadError, Scope.Scope> => {
  const text = Buffer.from(file.bytes).toString("utf8").trim()
  if (text.startsWith("ops_")) {
    return Effect.succeed<Credential>({ _tag: "ServiceAccount", path: file.path, token: Redacted.make(text) })
  }
  if (text.startsWith("file:")) {
    const vaultPath = text.slice("file:".length)
    if (!vaultPath.startsWith("/")) {
      return Effect.fail(new UnrecognisedCredential({ path: file.path, reason: "a file: vault reference must name an absolute path" }))
    }
    return readProtected(vaultPath, { ids, kind: "vault" }).pipe(
      Effect.map((vault): Credential => ({ _tag: "VaultFile", path: vaultPath, contents: Redacted.make(vault.bytes) }))
    )
  }
  return Effect.fail(new UnrecognisedCredential({
    path: file.path,
    reason: text.length === 0 ? "is empty" : "holds neither a service account token (ops_...) nor a file: vault reference"
  }))
}

/** Overrides are honoured only when nothing is elevated: otherwise any user could bring a mapfile. */
const refuseOverridesWhenElevated = (request: ElevatedReadRequest, elevated: boolean) => {
  if (!elevated) return Effect.void
  const override = Option.orElse(request.mapFilePath, () => request.apiKeyPath)
  return Option.match(override, {
    onNone: () => Effect.void,
    onSome: ({ source }) => Effect.fail(new OverrideRefused({ source }))
  })
}

const elevatedRead = (request: ElevatedReadRequest) =>
  Effect.gen(function*() {
    const ids = processIds()
    const elevated = isElevated(ids)
    yield* refuseOverridesWhenElevated(request, elevated)
    const mapFilePath = Option.match(request.mapFilePath, { onNone: () => defaultMapFilePath, onSome: (o) => o.path })
    const mapfile = yield* readProtected(mapFilePath, { ids, kind: "mapfile" })
    let credential = Option.none<Credential>()
    if (request.readCredential) {
      const apiKeyPath = Option.match(request.apiKeyPath, { onNone: () => defaultApiKeyPath, onSome: (o) => o.path })
      const file = yield* readProtected(apiKeyPath, { ids, kind: "credential" })
      credential = Option.some(yield* parseCredential(file, ids))
    }
    return { mapfile, credential, elevated }
  }).pipe(Effect.scoped)

/** The elevated phase as a layer: descriptors are closed before the layer's value exists. */
export const ElevatedReadLive = (request: ElevatedReadRequest): Layer.Layer<ElevatedRead, ElevatedReadError> =>
  Layer.effect(ElevatedRead, elevatedRead(request))

export const ElevatedReadTest = (value: Context.Tag.Service<ElevatedRead>): Layer.Layer<ElevatedRead> =>
  Layer.succeed(ElevatedRead, value)

// ---------------------------------------------------------------------------------------------
// The drop and its witness

export interface Caller {
  readonly uid: number
  readonly gid: number
  readonly user: string
}

/** What the drop proved, for `-v` and for the privileged tests. Ids only, nothing secret. */
export interface DropReport {
  readonly from: { readonly uid: number; readonly gid: number }
  readonly to: { readonly uid: number; readonly gid: number }
  readonly threads: number
  readonly regain: "EPERM" | "not applicable"
  /** An async open (thread pool, or io_uring) of a protected file after the drop. */
  readonly asyncOpen: "EACCES" | "not applicable"
  readonly dumpable: boolean
  readonly coreLimit: bigint
}

const mint = Symbol("mint UnprivilegedCaller")

/**
 * Proof that the process runs with the caller's ids only. Nominal (a private brand), with a
 * private constructor: outside this module no code can make one, so a layer that requires it can
 * only be built after the drop.
 */
export class UnprivilegedCaller {
  declare private readonly brand: "UnprivilegedCaller"
  private constructor(readonly caller: Caller, readonly drop: DropReport) {}
  static [mint](caller: Caller, drop: DropReport): UnprivilegedCaller {
    return new UnprivilegedCaller(caller, drop)
  }
}

export const Unprivileged = Context.GenericTag<UnprivilegedCaller>("op-secret-manager/Unprivileged")

const UNCHANGED = 0xffffffff

/** Every thread's real, effective, saved and filesystem ids, from /proc: the kernel's own view. */
const threadIds = (): Array<{ uids: Array<number>; gids: Array<number> }> =>
  fs.readdirSync("/proc/self/task").map((task) => {
    const status = fs.readFileSync(`/proc/self/task/${task}/status`, "utf8")
    const ids = (key: string) => (status.match(new RegExp(`^${key}:\\s+(.*)$`, "m"))?.[1] ?? "").trim().split(/\s+/).map(Number)
    return { uids: ids("Uid"), gids: ids("Gid") }
  })

const dropPrivileges = Effect.try({
  try: (): { caller: Caller; drop: DropReport } | string => {
    const native = libc()
    const before = processIds()
    const uid = native.getresuid().real
    const gid = native.getresgid().real
    // Group first: once the uid is dropped we would no longer be allowed to change groups.
    const gidErrno = native.setresgid(gid, gid, gid)
    if (gidErrno !== 0) return `setresgid failed with errno ${gidErrno}`
    const uidErrno = native.setresuid(uid, uid, uid)
    if (uidErrno !== 0) return `setresuid failed with errno ${uidErrno}`
    // Secrets live in this process's memory from now on: no core dumps, no ptrace by the caller.
    if (native.setNonDumpable() !== 0) return "prctl(PR_SET_DUMPABLE, 0) failed"
    if (native.disableCoreDumps() !== 0) return "setrlimit(RLIMIT_CORE, 0) failed"

    const u = native.getresuid(), g = native.getresgid()
    if (u.real !== uid || u.effective !== uid || u.saved !== uid) return "user ids are not all the caller's after setresuid"
    if (g.real !== gid || g.effective !== gid || g.saved !== gid) return "group ids are not all the caller's after setresgid"
    const threads = threadIds()
    for (const thread of threads) {
      if (thread.uids.length !== 4 || thread.uids.some((id) => id !== uid)) return "a thread still holds another user id"
      if (thread.gids.length !== 4 || thread.gids.some((id) => id !== gid)) return "a thread still holds another group id"
    }
    // Try to get the service account back. It must fail with EPERM; root can always regain, so
    // for a root caller there is nothing to prove.
    let regain: DropReport["regain"] = "not applicable"
    if (uid !== 0 && (before.euid !== uid || before.egid !== gid)) {
      const uidBack = before.euid !== uid ? native.setresuid(UNCHANGED, before.euid, UNCHANGED) : EPERM
      const gidBack = before.egid !== gid ? native.setresgid(UNCHANGED, before.egid, UNCHANGED) : EPERM
      if (uidBack !== EPERM || gidBack !== EPERM) {
        native.setresuid(uid, uid, uid)
        return "the service account could be regained after the drop"
      }
      regain = "EPERM"
    }
    const dumpable = native.isDumpable()
    const coreLimit = native.coreDumpLimit()
    if (dumpable || coreLimit !== 0n) return "the process is still dumpable"
    // getpwuid_r of the effective uid, which is now the caller's: NSS users (LDAP, SSSD) count.
    let user: string
    try {
      user = os.userInfo().username
    } catch {
      return `uid ${uid} has no user name`
    }
    return {
      caller: { uid, gid, user },
      drop: {
        from: { uid: before.euid, gid: before.egid },
        to: { uid, gid },
        threads: threads.length,
        regain,
        asyncOpen: "not applicable",
        dumpable,
        coreLimit
      }
    }
  },
  catch: (error) => new DropFailed({ reason: error instanceof Error ? error.message : String(error) })
}).pipe(
  Effect.flatMap((result) =>
    typeof result === "string"
      ? Effect.fail(result.endsWith("has no user name") ? new UnknownCaller({ uid: process.getuid?.() ?? -1 }) : new DropFailed({ reason: result }))
      : Effect.succeed(result)
  ),
  Effect.map(({ caller, drop }) => UnprivilegedCaller[mint](caller, drop))
)

/**
 * The drop as a layer. It requires ElevatedRead only to order it: the drop happens after every
 * protected file has been read and closed.
 */
export const UnprivilegedLive: Layer.Layer<UnprivilegedCaller, DropFailed | UnknownCaller, ElevatedRead> = Layer.effect(
  Unprivileged,
  Effect.gen(function*() {
    const read = yield* ElevatedRead
    const witness = yield* dropPrivileges
    // The thread pool runs async fs calls (and io_uring would keep the ring creator's credentials):
    // prove that they too now fail on the credential, a file only the service account may read.
    // Cleanup reads no credential, holds no secret and needs no network: nothing to prove there.
    if (witness.drop.regain !== "EPERM" || Option.isNone(read.credential)) return witness
    const protectedPath = read.credential.value.path
    const code = yield* Effect.promise(() =>
      fs.promises.open(protectedPath, "r").then(
        async (handle) => {
          await handle.close()
          return "opened"
        },
        (error: unknown) => errnoCode(error)
      )
    )
    if (code !== "EACCES") {
      return yield* Effect.fail(new DropFailed({ reason: `an async open of ${protectedPath} gave ${code} after the drop, not EACCES` }))
    }
    return UnprivilegedCaller[mint](witness.caller, { ...witness.drop, asyncOpen: "EACCES" })
  })
)

/** The drop for commands that read nothing while elevated (doctor, install). */
export const UnprivilegedWithoutRead: Layer.Layer<UnprivilegedCaller, DropFailed | UnknownCaller> = Layer.effect(Unprivileged, dropPrivileges)

/**
 * A root caller gains nothing from the service account: `check` drops to root before reading,
 * so that root's own access applies and `--map-file-path` is honoured (nothing is elevated any
 * more). For anyone else this does nothing.
 */
export const dropEarlyForRoot: Effect.Effect<void, DropFailed> = Effect.suspend(() => {
  const ids = processIds()
  if (ids.ruid !== 0 || !isElevated(ids)) return Effect.void
  const native = libc()
  if (native.setresgid(0, 0, 0) !== 0 || native.setresuid(0, 0, 0) !== 0) {
    return Effect.fail(new DropFailed({ reason: "could not return to root's own ids" }))
  }
  return Effect.void
})

/** For service tests: a witness for a caller, without any syscall. */
export const UnprivilegedTest = (caller: Caller): Layer.Layer<UnprivilegedCaller> =>
  Layer.succeed(
    Unprivileged,
    UnprivilegedCaller[mint](caller, {
      from: { uid: caller.uid, gid: caller.gid },
      to: { uid: caller.uid, gid: caller.gid },
      threads: 1,
      regain: "not applicable",
      asyncOpen: "not applicable",
      dumpable: false,
      coreLimit: 0n
    })
  )
