/**
 * SecretWriter: all-or-nothing writes of the caller's secret files, and their removal.
 *
 * It runs only after the drop (its live layer requires the `Unprivileged` witness), so the kernel
 * decides where the caller may write. A commit stages every file first (a temp file in the target's
 * directory, O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, fsync), then renames them into place, keeping a
 * hard link to each old file until every rename succeeded; any failure puts every target back as it
 * was. rename(2) replaces a planted symlink or hard link rather than writing through it.
 *
 * The work is synchronous node:fs on purpose: sync calls run on the main thread, whose credentials
 * the drop verified, and the whole commit is one uninterruptible step, so a SIGTERM cannot stop it
 * between two renames.
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import { posix } from "node:path"
import { errnoCode } from "../native/libc.ts"
import { type Caller, Unprivileged, type UnprivilegedCaller } from "./Privileges.ts"

/** A target could not be written or removed (exit 73). */
export class OutputError extends Data.TaggedError("OutputError")<{
  readonly path: string
  readonly reason: string
}> {}

export interface PlannedFile {
  /** Absolute, normalised target path (see Paths.resolveTarget). */
  readonly path: string
  readonly content: Redacted.Redacted<string>
}

export interface FileOutcome {
  readonly path: string
  readonly status: "written" | "unchanged"
}

export interface RemovalOutcome {
  readonly path: string
  readonly status: "removed" | "absent" | "skipped"
  readonly reason?: string
}

export class SecretWriter extends Context.Tag("op-secret-manager/SecretWriter")<SecretWriter, {
  readonly commit: (files: ReadonlyArray<PlannedFile>) => Effect.Effect<ReadonlyArray<FileOutcome>, OutputError>
  readonly remove: (paths: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<RemovalOutcome>, OutputError>
}>() {}

// ---------------------------------------------------------------------------------------------
// The file system calls the writer makes: node:fs, or a wrapper that injects failures in tests.

export interface WriterFs {
  readonly lstat: (path: string) => fs.Stats | undefined
  readonly mkdir: (path: string, mode: number) => void
  readonly chmod: (path: string, mode: number) => void
  readonly open: (path: string, flags: number, mode: number) => number
  readonly read: (fd: number, buffer: Uint8Array, offset: number, length: number) => number
  readonly write: (fd: number, buffer: Uint8Array, offset: number, length: number) => number
  readonly fchmod: (fd: number, mode: number) => void
  readonly fsync: (fd: number) => void
  readonly close: (fd: number) => void
  readonly rename: (from: string, to: string) => void
  readonly link: (existing: string, newPath: string) => void
  readonly unlink: (path: string) => void
  readonly rmdir: (path: string) => void
  readonly readdir: (path: string) => Array<string>
  readonly realpath: (path: string) => string
}

export const nodeWriterFs: WriterFs = {
  lstat: (path) => fs.lstatSync(path, { throwIfNoEntry: false }),
  mkdir: (path, mode) => fs.mkdirSync(path, { mode }),
  chmod: (path, mode) => fs.chmodSync(path, mode),
  open: (path, flags, mode) => fs.openSync(path, flags, mode),
  read: (fd, buffer, offset, length) => fs.readSync(fd, buffer, offset, length, null),
  write: (fd, buffer, offset, length) => fs.writeSync(fd, buffer, offset, length),
  fchmod: (fd, mode) => fs.fchmodSync(fd, mode),
  fsync: (fd) => fs.fsyncSync(fd),
  close: (fd) => fs.closeSync(fd),
  rename: (from, to) => fs.renameSync(from, to),
  link: (existing, newPath) => fs.linkSync(existing, newPath),
  unlink: (path) => fs.unlinkSync(path),
  rmdir: (path) => fs.rmdirSync(path),
  readdir: (path) => fs.readdirSync(path),
  realpath: (path) => fs.realpathSync.native(path)
}

// ---------------------------------------------------------------------------------------------
// Commit

class Stop extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`)
  }
}

const stop = (path: string, what: string, error: unknown): Stop => new Stop(path, `${what} (${errnoCode(error)})`)

const FILE_MODE = 0o600
const DIR_MODE = 0o700
const TEMP = /^\.op-secret-manager\.(\d+)\.[0-9a-f]+\.(tmp|bak)$/

const tempName = (dir: string, kind: "tmp" | "bak") =>
  posix.join(dir, `.op-secret-manager.${process.pid}.${randomBytes(6).toString("hex")}.${kind}`)

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return errnoCode(error) === "EPERM"
  }
}

/** Temp and backup files of a run that was killed: the next run in the directory removes them. */
const removeLeftovers = (fsx: WriterFs, dir: string, uid: number) => {
  let names: Array<string>
  try {
    names = fsx.readdir(dir)
  } catch {
    return
  }
  for (const name of names) {
    const match = TEMP.exec(name)
    if (match === null || isAlive(Number(match[1]))) continue
    const path = posix.join(dir, name)
    const stat = fsx.lstat(path)
    if (stat?.isFile() && stat.uid === uid) {
      try {
        fsx.unlink(path)
      } catch {
        // Another run may have removed it first.
      }
    }
  }
}

/**
 * A root caller must not be steered by other users: every directory on the way to the target must
 * belong to root and be writable by nobody else (sticky world-writable ones, like /tmp, are fine),
 * and no symlink on the way may belong to anyone but root.
 */
const checkTrustedDirectory = (fsx: WriterFs, dir: string) => {
  const prefixes = (path: string) => {
    const parts = path.split("/").filter((part) => part.length > 0)
    return parts.map((_, i) => "/" + parts.slice(0, i + 1).join("/"))
  }
  for (const prefix of prefixes(dir)) {
    const stat = fsx.lstat(prefix)
    if (stat?.isSymbolicLink() && stat.uid !== 0) throw new Stop(dir, `${prefix} is a symbolic link owned by uid ${stat.uid}`)
  }
  const real = fsx.realpath(dir)
  for (const prefix of ["/", ...prefixes(real)]) {
    const stat = fsx.lstat(prefix)
    if (stat === undefined) throw new Stop(dir, `${prefix} disappeared`)
    const groupOrOtherWritable = (stat.mode & 0o022) !== 0 && (stat.mode & 0o1000) === 0
    if (stat.uid !== 0 || groupOrOtherWritable) {
      throw new Stop(dir, `${prefix} belongs to uid ${stat.uid} or is writable by others; root writes only into root-owned directories`)
    }
  }
}

/** The deepest part of `dir` that exists (at worst "/"). */
const existingAncestor = (fsx: WriterFs, dir: string): string => {
  let current = dir
  while (fsx.lstat(current) === undefined && posix.dirname(current) !== current) current = posix.dirname(current)
  return current
}

/** Creates the missing directories of `dir` (mode 0700) and returns those it created, outermost first. */
const ensureDirectory = (fsx: WriterFs, dir: string): Array<string> => {
  const missing: Array<string> = []
  let current = dir
  for (;;) {
    const stat = fsx.lstat(current)
    if (stat !== undefined) {
      // A symlink to a directory is followed, as mkdir -p would: the caller's own permissions apply.
      if (!stat.isDirectory() && !(stat.isSymbolicLink() && isDirectory(fsx, current))) {
        throw new Stop(current, "exists and is not a directory")
      }
      break
    }
    missing.unshift(current)
    const parent = posix.dirname(current)
    if (parent === current) break
    current = parent
  }
  const created: Array<string> = []
  for (const path of missing) {
    try {
      fsx.mkdir(path, DIR_MODE)
      created.push(path)
      // The mode is set through a descriptor of the directory just made (O_NOFOLLOW): a path-based
      // chmod would follow whatever stands at that name by then.
      const fd = fsx.open(path, DIR_OPEN_FLAGS, 0)
      try {
        fsx.fchmod(fd, DIR_MODE)
      } finally {
        fsx.close(fd)
      }
    } catch (error) {
      // A concurrent run of the same user made it first: that is the directory we wanted.
      if (errnoCode(error) === "EEXIST" && fsx.lstat(path)?.isDirectory()) continue
      removeDirectories(fsx, created)
      throw stop(path, "cannot create directory", error)
    }
  }
  return created
}

const isDirectory = (fsx: WriterFs, path: string) => {
  try {
    return fsx.lstat(fsx.realpath(path))?.isDirectory() ?? false
  } catch {
    return false
  }
}

const removeDirectories = (fsx: WriterFs, created: ReadonlyArray<string>) => {
  for (const path of [...created].reverse()) {
    try {
      fsx.rmdir(path)
    } catch {
      // Not empty (another run wrote there) or already gone: leave it.
    }
  }
}

const DIR_OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW
const READ_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK
const STAGE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW

/** True when the target already is exactly what we would write: the caller's, 0600, same bytes. */
const isUnchanged = (fsx: WriterFs, path: string, stat: fs.Stats, content: Uint8Array, uid: number): boolean => {
  if (!stat.isFile() || stat.uid !== uid || (stat.mode & 0o7777) !== FILE_MODE || stat.nlink !== 1) return false
  if (stat.size !== content.length) return false
  let fd: number
  try {
    fd = fsx.open(path, READ_FLAGS, 0)
  } catch {
    return false
  }
  try {
    const buffer = Buffer.alloc(content.length + 1)
    let length = 0
    for (;;) {
      const n = fsx.read(fd, buffer, length, buffer.length - length)
      if (n === 0) break
      length += n
      if (length > content.length) return false
    }
    return length === content.length && Buffer.compare(buffer.subarray(0, length), content) === 0
  } catch {
    return false
  } finally {
    fsx.close(fd)
  }
}

const stage = (fsx: WriterFs, target: string, content: Uint8Array): string => {
  const tmp = tempName(posix.dirname(target), "tmp")
  let fd: number
  try {
    fd = fsx.open(tmp, STAGE_FLAGS, FILE_MODE)
  } catch (error) {
    throw stop(target, "cannot create a file in its directory", error)
  }
  try {
    let offset = 0
    while (offset < content.length) offset += fsx.write(fd, content, offset, content.length - offset)
    fsx.fchmod(fd, FILE_MODE)
    fsx.fsync(fd)
  } catch (error) {
    fsx.close(fd)
    unlinkQuietly(fsx, tmp)
    throw stop(target, "cannot write", error)
  }
  try {
    fsx.close(fd)
  } catch (error) {
    unlinkQuietly(fsx, tmp)
    throw stop(target, "cannot write", error)
  }
  return tmp
}

const unlinkQuietly = (fsx: WriterFs, path: string) => {
  try {
    fsx.unlink(path)
  } catch {
    // Best effort: the next run in this directory removes leftovers.
  }
}

const syncDirectory = (fsx: WriterFs, dir: string) => {
  try {
    const fd = fsx.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, 0)
    try {
      fsx.fsync(fd)
    } finally {
      fsx.close(fd)
    }
  } catch {
    // Durability of the rename only; the files themselves were synced before it.
  }
}

interface Staged {
  readonly target: string
  readonly tmp: string
  backup?: string
  committed: boolean
}

const rollback = (fsx: WriterFs, staged: ReadonlyArray<Staged>, createdDirs: ReadonlyArray<string>) => {
  for (const file of [...staged].reverse()) {
    if (file.committed) {
      if (file.backup !== undefined) {
        try {
          fsx.rename(file.backup, file.target)
        } catch {
          // The old content stays reachable under its backup name for the operator.
        }
      } else unlinkQuietly(fsx, file.target)
    } else {
      unlinkQuietly(fsx, file.tmp)
      if (file.backup !== undefined) unlinkQuietly(fsx, file.backup)
    }
  }
  removeDirectories(fsx, createdDirs)
}

/** The synchronous commit; throws `Stop` after putting everything back. Exported for tests. */
export const commitFiles = (fsx: WriterFs, caller: Caller, files: ReadonlyArray<PlannedFile>): Array<FileOutcome> => {
  const dirs = [...new Set(files.map((file) => posix.dirname(file.path)))]
  const createdDirs: Array<string> = []
  const staged: Array<Staged> = []
  const outcomes: Array<FileOutcome> = []
  try {
    for (const dir of dirs) {
      // For root, judge the directories that exist before creating anything below them: a new
      // directory inside a trusted one is root's own, so nobody else can swap it afterwards.
      if (caller.uid === 0) checkTrustedDirectory(fsx, existingAncestor(fsx, dir))
      createdDirs.push(...ensureDirectory(fsx, dir))
      if (caller.uid === 0) checkTrustedDirectory(fsx, dir)
      removeLeftovers(fsx, dir, caller.uid)
    }
    for (const file of files) {
      const content = Buffer.from(Redacted.value(file.content), "utf8")
      const existing = fsx.lstat(file.path)
      if (existing !== undefined && !existing.isFile() && !existing.isSymbolicLink()) {
        throw new Stop(file.path, existing.isDirectory() ? "is a directory" : "exists and is not a regular file")
      }
      if (existing !== undefined && isUnchanged(fsx, file.path, existing, content, caller.uid)) {
        outcomes.push({ path: file.path, status: "unchanged" })
        continue
      }
      staged.push({ target: file.path, tmp: stage(fsx, file.path, content), committed: false })
      outcomes.push({ path: file.path, status: "written" })
    }
    for (const file of staged) {
      if (fsx.lstat(file.target) !== undefined) {
        const backup = tempName(posix.dirname(file.target), "bak")
        try {
          fsx.link(file.target, backup)
        } catch (error) {
          throw stop(file.target, "cannot keep the old file while replacing it", error)
        }
        file.backup = backup
      }
      try {
        fsx.rename(file.tmp, file.target)
      } catch (error) {
        throw stop(file.target, "cannot replace", error)
      }
      file.committed = true
    }
  } catch (error) {
    rollback(fsx, staged, createdDirs)
    throw error
  }
  for (const file of staged) if (file.backup !== undefined) unlinkQuietly(fsx, file.backup)
  for (const dir of dirs) syncDirectory(fsx, dir)
  return outcomes
}

// ---------------------------------------------------------------------------------------------
// Removal

/** Removes regular files and symlinks at the targets; never directories. Exported for tests. */
export const removeFiles = (fsx: WriterFs, caller: Caller, paths: ReadonlyArray<string>): Array<RemovalOutcome> => {
  const outcomes: Array<RemovalOutcome> = []
  let failure: Stop | undefined
  for (const path of paths) {
    try {
      if (caller.uid === 0 && fsx.lstat(posix.dirname(path)) !== undefined) checkTrustedDirectory(fsx, posix.dirname(path))
      const stat = fsx.lstat(path)
      if (stat === undefined) {
        outcomes.push({ path, status: "absent" })
      } else if (stat.isFile() || stat.isSymbolicLink()) {
        fsx.unlink(path)
        outcomes.push({ path, status: "removed" })
      } else {
        outcomes.push({ path, status: "skipped", reason: stat.isDirectory() ? "is a directory" : "is not a regular file" })
      }
    } catch (error) {
      if (errnoCode(error) === "ENOTDIR") {
        outcomes.push({ path, status: "absent" })
        continue
      }
      const problem = error instanceof Stop ? error : stop(path, "cannot remove", error)
      failure ??= problem
      outcomes.push({ path, status: "skipped", reason: problem.reason })
    }
  }
  if (failure !== undefined) throw failure
  return outcomes
}

// ---------------------------------------------------------------------------------------------
// Layers

const toOutputError = (error: unknown): OutputError =>
  error instanceof Stop
    ? new OutputError({ path: error.path, reason: error.reason })
    : new OutputError({ path: "", reason: error instanceof Error ? error.message : String(error) })

export const makeSecretWriter = (fsx: WriterFs, caller: Caller): Context.Tag.Service<SecretWriter> =>
  SecretWriter.of({
    commit: (files) =>
      Effect.uninterruptible(Effect.try({ try: () => commitFiles(fsx, caller, files), catch: toOutputError })),
    remove: (paths) =>
      Effect.uninterruptible(Effect.try({ try: () => removeFiles(fsx, caller, paths), catch: toOutputError }))
  })

/** Requires the drop: files are only ever written with the caller's own ids. */
export const SecretWriterLive: Layer.Layer<SecretWriter, never, UnprivilegedCaller> = Layer.effect(
  SecretWriter,
  Effect.map(Unprivileged, (unprivileged) => makeSecretWriter(nodeWriterFs, unprivileged.caller))
)

/** An in-memory writer for program tests: `files` maps each path to its content. */
export const SecretWriterTest = (files: Map<string, string> = new Map()): Layer.Layer<SecretWriter> =>
  Layer.succeed(
    SecretWriter,
    SecretWriter.of({
      commit: (planned) =>
        Effect.sync(() =>
          planned.map(({ path, content }) => {
            const value = Redacted.value(content)
            const status = files.get(path) === value ? "unchanged" as const : "written" as const
            files.set(path, value)
            return { path, status }
          })
        ),
      remove: (paths) =>
        Effect.sync(() => paths.map((path) => ({ path, status: files.delete(path) ? "removed" as const : "absent" as const })))
    })
  )
