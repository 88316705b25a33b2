/**
 * SecretWriter against real temporary directories: modes, "unchanged" detection, planted symlinks,
 * hard links, directories and FIFOs, leftovers of killed runs, removal, and all-or-nothing commits
 * under a failure injected at every mutating file system call.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { execFileSync } from "node:child_process"
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import type { Caller } from "../src/services/Privileges.ts"
import {
  commitFiles,
  makeSecretWriter,
  nodeWriterFs,
  OutputError,
  type PlannedFile,
  removeFiles,
  type WriterFs
} from "../src/services/SecretWriter.ts"

const caller: Caller = { uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1, user: "tester" }
const isRoot = caller.uid === 0

// ---------------------------------------------------------------------------------------------
// Temporary directories

const roots: Array<string> = []

const makeRoot = (): string => {
  const root = mkdtempSync(join(tmpdir(), "osm-writer-"))
  roots.push(root)
  return root
}

const removeRoot = (root: string) => rmSync(root, { recursive: true, force: true })

afterEach(() => {
  for (const root of roots.splice(0)) removeRoot(root)
})

const planned = (path: string, value: string): PlannedFile => ({ path, content: Redacted.make(value) })

const bytesOf = (value: string) => Buffer.from(value, "utf8")

const modeOf = (path: string) => lstatSync(path).mode & 0o7777

const TEMP_FILE = /^\.op-secret-manager\./

/** Every temp or backup file the writer left anywhere under `root`. */
const tempFilesUnder = (root: string): Array<string> =>
  readdirSync(root, { recursive: true, encoding: "utf8" }).filter((path) => TEMP_FILE.test(path.split("/").pop() ?? ""))

interface Entry {
  readonly kind: "file" | "directory" | "symlink" | "other"
  readonly mode: number
  readonly ino: number
  readonly content: string
}

/** Everything under `root` (type, mode, inode, bytes or link target), to compare states exactly. */
const snapshot = (root: string): Record<string, Entry> => {
  const entries: Record<string, Entry> = {}
  for (const relative of readdirSync(root, { recursive: true, encoding: "utf8" }).sort()) {
    const path = join(root, relative)
    const stat = lstatSync(path)
    const mode = stat.mode & 0o7777
    if (stat.isFile()) entries[relative] = { kind: "file", mode, ino: stat.ino, content: readFileSync(path).toString("hex") }
    else if (stat.isDirectory()) entries[relative] = { kind: "directory", mode, ino: stat.ino, content: "" }
    else if (stat.isSymbolicLink()) entries[relative] = { kind: "symlink", mode, ino: stat.ino, content: readlinkSync(path) }
    else entries[relative] = { kind: "other", mode, ino: stat.ino, content: "" }
  }
  return entries
}

/** What the commit threw, or undefined when it succeeded. */
const failureOf = (run: () => unknown): unknown => {
  try {
    run()
    return undefined
  } catch (error) {
    return error ?? new Error("threw a nullish value")
  }
}

// ---------------------------------------------------------------------------------------------
// A WriterFs that fails one mutating call

type MutatingOp = "mkdir" | "chmod" | "open" | "write" | "fchmod" | "fsync" | "close" | "rename" | "link" | "unlink"

interface Call {
  readonly op: MutatingOp
  /** The path the call acts on (for descriptor calls: the path the descriptor was opened with). */
  readonly path: string
}

const injectedError = () => Object.assign(new Error("injected"), { code: "EIO" })

/**
 * Wraps nodeWriterFs, logs every mutating call, and makes call number `failAt` throw EIO (that call
 * only: later calls pass through so the rollback can run). close(2) releases the descriptor even
 * when it reports an error, so the injected close really closes before it throws.
 */
const failingFs = (failAt: number): { readonly fsx: WriterFs; readonly calls: Array<Call> } => {
  const calls: Array<Call> = []
  const openPaths = new Map<number, string>()
  const fails = (op: MutatingOp, path: string) => calls.push({ op, path }) - 1 === failAt
  const pathOf = (fd: number) => openPaths.get(fd) ?? `fd ${fd}`
  const fsx: WriterFs = {
    ...nodeWriterFs,
    mkdir: (path, mode) => {
      if (fails("mkdir", path)) throw injectedError()
      nodeWriterFs.mkdir(path, mode)
    },
    chmod: (path, mode) => {
      if (fails("chmod", path)) throw injectedError()
      nodeWriterFs.chmod(path, mode)
    },
    open: (path, flags, mode) => {
      if (fails("open", path)) throw injectedError()
      const fd = nodeWriterFs.open(path, flags, mode)
      openPaths.set(fd, path)
      return fd
    },
    write: (fd, buffer, offset, length) => {
      if (fails("write", pathOf(fd))) throw injectedError()
      return nodeWriterFs.write(fd, buffer, offset, length)
    },
    fchmod: (fd, mode) => {
      if (fails("fchmod", pathOf(fd))) throw injectedError()
      nodeWriterFs.fchmod(fd, mode)
    },
    fsync: (fd) => {
      if (fails("fsync", pathOf(fd))) throw injectedError()
      nodeWriterFs.fsync(fd)
    },
    close: (fd) => {
      const fail = fails("close", pathOf(fd))
      openPaths.delete(fd)
      nodeWriterFs.close(fd)
      if (fail) throw injectedError()
    },
    rename: (from, to) => {
      if (fails("rename", to)) throw injectedError()
      nodeWriterFs.rename(from, to)
    },
    link: (existing, newPath) => {
      if (fails("link", newPath)) throw injectedError()
      nodeWriterFs.link(existing, newPath)
    },
    unlink: (path) => {
      if (fails("unlink", path)) throw injectedError()
      nodeWriterFs.unlink(path)
    }
  }
  return { fsx, calls }
}

const countingFs = () => failingFs(-1)

/**
 * The calls whose failure the writer may shrug off: removing a backup after every rename succeeded,
 * syncing a directory after the renames, and opening a target to compare it (it is then rewritten).
 */
const isBestEffort = (call: Call, targets: ReadonlySet<string>, dirs: ReadonlySet<string>, previous: Call | undefined): boolean =>
  (call.op === "unlink" && call.path.endsWith(".bak")) ||
  // A directory sync (open, fsync, close) is best effort; opening a new directory right after its
  // mkdir to set its mode, and closing it after the fchmod, are not.
  (dirs.has(call.path) && (call.op === "open" || call.op === "fsync" || call.op === "close") &&
    !(previous?.path === call.path && (previous.op === "mkdir" || previous.op === "fchmod"))) ||
  (call.op === "open" && targets.has(call.path))

// ---------------------------------------------------------------------------------------------
// The scenario of an injected failure: initial files on disk, the commit, and what must hold after

interface Scenario {
  /** Relative path -> old content and mode; created before the commit. */
  readonly existing: ReadonlyArray<{ readonly path: string; readonly content: string; readonly mode: number }>
  /** Relative path -> new content. */
  readonly commit: ReadonlyArray<{ readonly path: string; readonly content: string }>
}

const setUp = (root: string, scenario: Scenario) => {
  for (const file of scenario.existing) {
    const path = join(root, file.path)
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    writeFileSync(path, file.content, { mode: file.mode })
    chmodSync(path, file.mode)
  }
  // A file next to the targets that no commit names: it must never change.
  writeFileSync(join(root, "bystander"), "not a target\n", { mode: 0o600 })
}

const plannedFor = (root: string, scenario: Scenario) =>
  scenario.commit.map((file) => planned(join(root, file.path), file.content))

interface InjectedRun {
  readonly call: Call
  readonly threw: boolean
}

/** Commits `scenario` in a fresh directory with call `failAt` failing, and checks all or nothing. */
const runWithFailureAt = (scenario: Scenario, failAt: number): InjectedRun => {
  const root = mkdtempSync(join(tmpdir(), "osm-inject-"))
  try {
    setUp(root, scenario)
    const before = snapshot(root)
    const files = plannedFor(root, scenario)
    const targets = new Set(files.map((file) => file.path))
    const dirs = new Set(files.map((file) => dirname(file.path)))
    const { calls, fsx } = failingFs(failAt)
    const failure = failureOf(() => commitFiles(fsx, caller, files))
    const call = calls[failAt]
    if (call === undefined) throw new Error(`the commit made only ${calls.length} mutating calls, none at ${failAt}`)
    const previous = calls[failAt - 1]
    if (failure !== undefined) {
      // Everything as it was: same bytes, modes and inodes, created directories gone, no temp files.
      expect(failure instanceof Error && /EIO|injected/.test(failure.message)).toBe(true)
      expect(snapshot(root)).toEqual(before)
      expect(isBestEffort(call, targets, dirs, previous), `${call.op} ${call.path} failed the commit`).toBe(false)
    } else {
      expect(isBestEffort(call, targets, dirs, previous), `${call.op} ${call.path} failed but the commit succeeded`).toBe(true)
      for (const file of scenario.commit) {
        const path = join(root, file.path)
        expect(lstatSync(path).isFile()).toBe(true)
        expect(modeOf(path)).toBe(0o600)
        expect(readFileSync(path)).toEqual(bytesOf(file.content))
      }
      expect(readFileSync(join(root, "bystander"), "utf8")).toBe("not a target\n")
      // Only the backup whose removal failed may stay (the next run removes it); never a temp file.
      const leftovers = tempFilesUnder(root)
      expect(leftovers.every((path) => path.endsWith(".bak"))).toBe(true)
      expect(leftovers.length).toBe(call.op === "unlink" ? 1 : 0)
    }
    return { call, threw: failure !== undefined }
  } finally {
    removeRoot(root)
  }
}

/** The mutating calls of a successful commit of `scenario`. */
const callsOf = (scenario: Scenario): Array<Call> => {
  const root = mkdtempSync(join(tmpdir(), "osm-count-"))
  try {
    setUp(root, scenario)
    const { calls, fsx } = countingFs()
    commitFiles(fsx, caller, plannedFor(root, scenario))
    return calls
  } finally {
    removeRoot(root)
  }
}

// ---------------------------------------------------------------------------------------------

describe("commitFiles", () => {
  it("writes new files 0600 with their exact bytes and creates missing directories 0700", () => {
    const root = makeRoot()
    const multiLine = "line one\nline two\r\n\ttabbed é 🔑\n\n"
    const outcomes = commitFiles(nodeWriterFs, caller, [
      planned(join(root, "plain"), "s3cret"),
      planned(join(root, "empty"), ""),
      planned(join(root, "deep/er/multi"), multiLine)
    ])
    expect(outcomes).toEqual([
      { path: join(root, "plain"), status: "written" },
      { path: join(root, "empty"), status: "written" },
      { path: join(root, "deep/er/multi"), status: "written" }
    ])
    expect(readFileSync(join(root, "plain"))).toEqual(bytesOf("s3cret"))
    expect(readFileSync(join(root, "empty")).length).toBe(0)
    expect(readFileSync(join(root, "deep/er/multi"))).toEqual(bytesOf(multiLine))
    for (const file of ["plain", "empty", "deep/er/multi"]) {
      const stat = lstatSync(join(root, file))
      expect(stat.isFile()).toBe(true)
      expect(stat.mode & 0o7777).toBe(0o600)
      expect(stat.uid).toBe(caller.uid)
      expect(stat.nlink).toBe(1)
    }
    expect(modeOf(join(root, "deep"))).toBe(0o700)
    expect(modeOf(join(root, "deep/er"))).toBe(0o700)
    expect(tempFilesUnder(root)).toEqual([])
  })

  it("gives new files mode 0600 and new directories 0700 even under umask 0777", () => {
    const root = makeRoot()
    const previous = process.umask(0o777)
    try {
      commitFiles(nodeWriterFs, caller, [planned(join(root, "dir/file"), "x")])
    } finally {
      process.umask(previous)
    }
    expect(modeOf(join(root, "dir"))).toBe(0o700)
    expect(modeOf(join(root, "dir/file"))).toBe(0o600)
  })

  it("reports an identical second commit as unchanged and leaves the file alone", () => {
    const root = makeRoot()
    const path = join(root, "token")
    commitFiles(nodeWriterFs, caller, [planned(path, "same value\n")])
    const first = statSync(path, { bigint: true })
    const outcomes = commitFiles(nodeWriterFs, caller, [planned(path, "same value\n")])
    expect(outcomes).toEqual([{ path, status: "unchanged" }])
    const second = statSync(path, { bigint: true })
    expect(second.ino).toBe(first.ino)
    expect(second.mtimeNs).toBe(first.mtimeNs)
    expect(second.ctimeNs).toBe(first.ctimeNs)
    expect(tempFilesUnder(root)).toEqual([])
  })

  it("replaces the file with a new inode when the value changed", () => {
    const root = makeRoot()
    const path = join(root, "token")
    commitFiles(nodeWriterFs, caller, [planned(path, "old value")])
    const before = lstatSync(path).ino
    const outcomes = commitFiles(nodeWriterFs, caller, [planned(path, "new value")])
    expect(outcomes).toEqual([{ path, status: "written" }])
    expect(lstatSync(path).ino).not.toBe(before)
    expect(readFileSync(path, "utf8")).toBe("new value")
    expect(tempFilesUnder(root)).toEqual([])
  })

  it("rewrites a file with the same bytes but the wrong mode, and a longer or shorter one", () => {
    const root = makeRoot()
    writeFileSync(join(root, "loose"), "value", { mode: 0o644 })
    chmodSync(join(root, "loose"), 0o644)
    writeFileSync(join(root, "prefix"), "value and more", { mode: 0o600 })
    writeFileSync(join(root, "short"), "val", { mode: 0o600 })
    const outcomes = commitFiles(nodeWriterFs, caller, ["loose", "prefix", "short"].map((name) => planned(join(root, name), "value")))
    expect(outcomes.map((outcome) => outcome.status)).toEqual(["written", "written", "written"])
    for (const name of ["loose", "prefix", "short"]) {
      expect(readFileSync(join(root, name), "utf8")).toBe("value")
      expect(modeOf(join(root, name))).toBe(0o600)
    }
  })

  it("writes and compares exactly when every write and read moves a single byte", () => {
    const root = makeRoot()
    const path = join(root, "slow")
    const value = "bytes one at a time: é 🔑\n"
    const oneByte: WriterFs = {
      ...nodeWriterFs,
      write: (fd, buffer, offset) => nodeWriterFs.write(fd, buffer, offset, 1),
      read: (fd, buffer, offset, length) => nodeWriterFs.read(fd, buffer, offset, Math.min(length, 1))
    }
    expect(commitFiles(oneByte, caller, [planned(path, value)])).toEqual([{ path, status: "written" }])
    expect(readFileSync(path)).toEqual(bytesOf(value))
    expect(commitFiles(oneByte, caller, [planned(path, value)])).toEqual([{ path, status: "unchanged" }])
    expect(commitFiles(oneByte, caller, [planned(path, value.slice(0, -2) + "X\n")])).toEqual([{ path, status: "written" }])
  })

  it("replaces a planted symlink with a regular file and leaves the file it pointed to unchanged", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const victim = join(outside, "victim")
    writeFileSync(victim, "victim content\n", { mode: 0o600 })
    const path = join(root, "token")
    symlinkSync(victim, path)
    const outcomes = commitFiles(nodeWriterFs, caller, [planned(path, "secret")])
    expect(outcomes).toEqual([{ path, status: "written" }])
    expect(lstatSync(path).isFile()).toBe(true)
    expect(readFileSync(path, "utf8")).toBe("secret")
    expect(readFileSync(victim, "utf8")).toBe("victim content\n")
    expect(modeOf(victim)).toBe(0o600)
  })

  it("replaces a symlink to a file that already holds the value instead of calling it unchanged", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const victim = join(outside, "victim")
    writeFileSync(victim, "secret", { mode: 0o600 })
    const path = join(root, "token")
    symlinkSync(victim, path)
    expect(commitFiles(nodeWriterFs, caller, [planned(path, "secret")])).toEqual([{ path, status: "written" }])
    expect(lstatSync(path).isFile()).toBe(true)
  })

  it("creates nothing at the destination of a dangling planted symlink", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const destination = join(outside, "would-be-created")
    const path = join(root, "token")
    symlinkSync(destination, path)
    commitFiles(nodeWriterFs, caller, [planned(path, "secret")])
    expect(existsSync(destination)).toBe(false)
    expect(lstatSync(path).isFile()).toBe(true)
    expect(readFileSync(path, "utf8")).toBe("secret")
  })

  it("breaks a planted hard link: the other name keeps its old content", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const other = join(outside, "other")
    writeFileSync(other, "other content", { mode: 0o600 })
    const path = join(root, "token")
    linkSync(other, path)
    const outcomes = commitFiles(nodeWriterFs, caller, [planned(path, "secret")])
    expect(outcomes).toEqual([{ path, status: "written" }])
    expect(readFileSync(other, "utf8")).toBe("other content")
    expect(lstatSync(other).nlink).toBe(1)
    expect(readFileSync(path, "utf8")).toBe("secret")
    expect(lstatSync(path).ino).not.toBe(lstatSync(other).ino)
  })

  it("rewrites a hard-linked file even when it already holds the value", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const other = join(outside, "other")
    writeFileSync(other, "secret", { mode: 0o600 })
    const path = join(root, "token")
    linkSync(other, path)
    expect(commitFiles(nodeWriterFs, caller, [planned(path, "secret")])).toEqual([{ path, status: "written" }])
    expect(lstatSync(path).nlink).toBe(1)
    expect(lstatSync(other).nlink).toBe(1)
  })

  it("never writes through a symlink planted at its temp file's name, and keeps the old file", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const victim = join(outside, "victim")
    writeFileSync(victim, "victim content", { mode: 0o600 })
    const path = join(root, "token")
    writeFileSync(path, "old", { mode: 0o600 })
    // An attacker who guessed the random temp name plants a symlink there just before the open.
    const planting: WriterFs = {
      ...nodeWriterFs,
      open: (name, flags, mode) => {
        if (name.endsWith(".tmp") && !existsSync(name)) symlinkSync(victim, name)
        return nodeWriterFs.open(name, flags, mode)
      }
    }
    const failure = failureOf(() => commitFiles(planting, caller, [planned(path, "secret")]))
    expect(failure instanceof Error ? failure.message : "").toMatch(/EEXIST/)
    expect(readFileSync(victim, "utf8")).toBe("victim content")
    expect(readFileSync(path, "utf8")).toBe("old")
  })

  it("refuses a target whose parent is a regular file, and writes nothing", () => {
    const root = makeRoot()
    writeFileSync(join(root, "file"), "x")
    const failure = failureOf(() =>
      commitFiles(nodeWriterFs, caller, [planned(join(root, "new"), "a"), planned(join(root, "file/inside"), "b")])
    )
    expect(failure).toBeInstanceOf(Error)
    expect(existsSync(join(root, "new"))).toBe(false)
    expect(readFileSync(join(root, "file"), "utf8")).toBe("x")
  })
})

describe("SecretWriter.commit with a target that cannot be replaced", () => {
  const withOthers = (root: string) => {
    writeFileSync(join(root, "before"), "old before", { mode: 0o600 })
    writeFileSync(join(root, "after"), "old after", { mode: 0o600 })
  }

  const expectOthersKept = (root: string) => {
    expect(readFileSync(join(root, "before"), "utf8")).toBe("old before")
    expect(readFileSync(join(root, "after"), "utf8")).toBe("old after")
    expect(existsSync(join(root, "new"))).toBe(false)
    expect(existsSync(join(root, "sub"))).toBe(false)
    expect(tempFilesUnder(root)).toEqual([])
  }

  const commitAround = (root: string, target: string) =>
    makeSecretWriter(nodeWriterFs, caller).commit([
      planned(join(root, "before"), "new before"),
      planned(join(root, "sub/new"), "brand new"),
      planned(target, "value"),
      planned(join(root, "after"), "new after")
    ])

  it.effect("fails with an OutputError naming a directory target and keeps every other target", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      withOthers(root)
      const target = join(root, "a-directory")
      mkdirSync(target)
      writeFileSync(join(target, "inside"), "untouched")
      const error = yield* Effect.flip(commitAround(root, target))
      expect(error).toBeInstanceOf(OutputError)
      expect(error._tag).toBe("OutputError")
      expect(error.path).toBe(target)
      expect(error.reason).toMatch(/directory/)
      expect(lstatSync(target).isDirectory()).toBe(true)
      expect(readFileSync(join(target, "inside"), "utf8")).toBe("untouched")
      expectOthersKept(root)
    }))

  it.effect("fails with an OutputError naming a FIFO target without opening it, and keeps every other target", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      withOthers(root)
      const target = join(root, "a-fifo")
      execFileSync("mkfifo", ["-m", "600", target])
      // Holding both ends open means a writer that did open the FIFO would fail the checks
      // below instead of blocking this worker forever.
      const guard = openSync(target, constants.O_RDWR | constants.O_NONBLOCK)
      try {
        const error = yield* Effect.flip(commitAround(root, target))
        expect(error).toBeInstanceOf(OutputError)
        expect(error.path).toBe(target)
        expect(lstatSync(target).isFIFO()).toBe(true)
        expectOthersKept(root)
      } finally {
        closeSync(guard)
      }
    }))

  it("never opens a FIFO, even behind a symlink, and replaces the symlink", () => {
    const root = makeRoot()
    const fifo = join(root, "fifo")
    execFileSync("mkfifo", ["-m", "600", fifo])
    const guard = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK)
    try {
      const opened: Array<string> = []
      const watching: WriterFs = {
        ...nodeWriterFs,
        open: (path, flags, mode) => {
          opened.push(path)
          return nodeWriterFs.open(path, flags, mode)
        }
      }
      const link = join(root, "link")
      symlinkSync(fifo, link)
      expect(commitFiles(watching, caller, [planned(link, "value")])).toEqual([{ path: link, status: "written" }])
      expect(opened).not.toContain(fifo)
      expect(opened).not.toContain(link)
      expect(lstatSync(link).isFile()).toBe(true)
      expect(lstatSync(fifo).isFIFO()).toBe(true)
    } finally {
      closeSync(guard)
    }
  })
})

// ---------------------------------------------------------------------------------------------

const fourFiles: Scenario = {
  existing: [
    // Different length: compared by size only.
    { path: "old-loose", content: "old loose value\n", mode: 0o644 },
    // 0600 and the same length as its new value: compared byte by byte.
    { path: "old-same-size", content: "AAAA-1111", mode: 0o600 }
  ],
  commit: [
    { path: "old-loose", content: "new value one" },
    { path: "old-same-size", content: "BBBB-2222" },
    { path: "brand-new", content: "" },
    { path: "fresh/inner/deep", content: "line 1\nline 2\n" }
  ]
}

describe("commitFiles under an injected failure", () => {
  it("keeps every old file when the rename of the third file fails", () => {
    const calls = callsOf(fourFiles)
    const renames = calls.flatMap((call, index) => call.op === "rename" ? [index] : [])
    expect(renames.length).toBe(4)
    const third = renames[2]
    if (third === undefined) throw new Error("no third rename")
    expect(runWithFailureAt(fourFiles, third)).toMatchObject({ call: { op: "rename" }, threw: true })
  })

  it("keeps every old file and removes created directories whichever mutating call fails", () => {
    const calls = callsOf(fourFiles)
    // 2 created directories (mkdir, open, fchmod, close), 4 staged files (open, write unless empty, fchmod, fsync, close),
    // 1 compare (open, close), 2 backup links, 4 renames, 2 backup unlinks, 2 directory syncs.
    expect(calls.length).toBe(43)
    let threw = 0
    let succeeded = 0
    const shrugged: Array<string> = []
    for (let failAt = 0; failAt < calls.length; failAt++) {
      const run = runWithFailureAt(fourFiles, failAt)
      if (run.threw) threw++
      else {
        succeeded++
        shrugged.push(run.call.op)
      }
    }
    expect(threw + succeeded).toBe(calls.length)
    expect(threw).toBeGreaterThan(calls.length * 0.6)
    // Two backup unlinks, two directory syncs (open, fsync, close each), one compare open.
    expect(shrugged.sort()).toEqual(["close", "close", "fsync", "fsync", "open", "open", "open", "unlink", "unlink"])
    expect({ threw, succeeded }).toEqual({ threw: 34, succeeded: 9 })
  })

  const fileArbitrary = FastCheck.record({
    dir: FastCheck.constantFrom("", "a", "a/b", "c"),
    name: FastCheck.constantFrom("s1", "s2", "s3", "token.env", ".hidden"),
    existing: FastCheck.option(FastCheck.record({
      mode: FastCheck.constantFrom(0o600, 0o644, 0o400),
      content: FastCheck.string({ maxLength: 24 })
    }), { nil: undefined }),
    content: FastCheck.string({ maxLength: 24, unit: "binary" }),
    keepOld: FastCheck.boolean()
  })

  const scenarioArbitrary = FastCheck.uniqueArray(fileArbitrary, {
    minLength: 1,
    maxLength: 5,
    selector: (file) => `${file.dir}/${file.name}`
  }).map((files): Scenario => ({
    existing: files.flatMap((file) =>
      file.existing === undefined ? [] : [{ path: join(file.dir, file.name), content: file.existing.content, mode: file.existing.mode }]
    ),
    commit: files.map((file) => ({
      path: join(file.dir, file.name),
      // Sometimes the value already on disk, to go through the byte-by-byte comparison.
      content: file.keepOld && file.existing !== undefined ? file.existing.content : file.content
    }))
  }))

  it.prop(
    "leaves every target either all old or all new for any files and any failing call",
    [scenarioArbitrary, FastCheck.nat()],
    ([scenario, position]) => {
      const calls = callsOf(scenario)
      if (calls.length === 0) return
      const run = runWithFailureAt(scenario, position % calls.length)
      if (!run.threw) expect(["unlink", "open", "fsync", "close"]).toContain(run.call.op)
    },
    { fastCheck: { numRuns: 50 } }
  )
})

// ---------------------------------------------------------------------------------------------

/** A pid no process has: signal 0 to it fails with ESRCH. */
const deadPid = (): number => {
  for (let pid = 999_999; ; pid++) {
    try {
      process.kill(pid, 0)
    } catch (error) {
      if (error instanceof Error && "code" in error && error.code === "ESRCH") return pid
    }
  }
}

describe("leftovers of a killed run", () => {
  it("removes the temp and backup files of a dead process from the target's directory", () => {
    const root = makeRoot()
    const pid = deadPid()
    const tmp = join(root, `.op-secret-manager.${pid}.abcdef.tmp`)
    const bak = join(root, `.op-secret-manager.${pid}.0123456789ab.bak`)
    writeFileSync(tmp, "half written", { mode: 0o600 })
    writeFileSync(bak, "old", { mode: 0o600 })
    commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])
    expect(existsSync(tmp)).toBe(false)
    expect(existsSync(bak)).toBe(false)
    expect(readFileSync(join(root, "token"), "utf8")).toBe("value")
  })

  it("removes leftovers even when every target is unchanged", () => {
    const root = makeRoot()
    commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])
    const tmp = join(root, `.op-secret-manager.${deadPid()}.abcdef.tmp`)
    writeFileSync(tmp, "half written", { mode: 0o600 })
    expect(commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])[0]?.status).toBe("unchanged")
    expect(existsSync(tmp)).toBe(false)
  })

  it("keeps the temp file of a live process, names that only look alike, and leftovers in other directories", () => {
    const root = makeRoot()
    const live = join(root, `.op-secret-manager.${process.pid}.abcdef.tmp`)
    const notHex = join(root, `.op-secret-manager.${deadPid()}.xyz.tmp`)
    const otherSuffix = join(root, `.op-secret-manager.${deadPid()}.abcdef.old`)
    mkdirSync(join(root, "elsewhere"))
    const elsewhere = join(root, "elsewhere", `.op-secret-manager.${deadPid()}.abcdef.tmp`)
    for (const path of [live, notHex, otherSuffix, elsewhere]) writeFileSync(path, "keep", { mode: 0o600 })
    commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])
    for (const path of [live, notHex, otherSuffix, elsewhere]) expect(readFileSync(path, "utf8")).toBe("keep")
  })

  it("keeps a dead process's leftover that is a directory or a symlink", () => {
    const root = makeRoot()
    const outside = makeRoot()
    writeFileSync(join(outside, "victim"), "victim")
    const dir = join(root, `.op-secret-manager.${deadPid()}.abcdef.tmp`)
    const link = join(root, `.op-secret-manager.${deadPid()}.abcdef.bak`)
    mkdirSync(dir)
    symlinkSync(join(outside, "victim"), link)
    commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])
    expect(lstatSync(dir).isDirectory()).toBe(true)
    expect(lstatSync(link).isSymbolicLink()).toBe(true)
    expect(readFileSync(join(outside, "victim"), "utf8")).toBe("victim")
  })

  it.runIf(isRoot)("keeps a dead process's leftover that belongs to another user", () => {
    const root = makeRoot()
    const foreign = join(root, `.op-secret-manager.${deadPid()}.abcdef.tmp`)
    writeFileSync(foreign, "theirs", { mode: 0o600 })
    chownSync(foreign, 54_321, 54_321)
    commitFiles(nodeWriterFs, caller, [planned(join(root, "token"), "value")])
    expect(readFileSync(foreign, "utf8")).toBe("theirs")
  })
})

// ---------------------------------------------------------------------------------------------

describe("removeFiles", () => {
  it("removes files and symlinks (not what they point to), reports missing ones absent and skips directories", () => {
    const root = makeRoot()
    const outside = makeRoot()
    const victim = join(outside, "victim")
    writeFileSync(victim, "victim")
    const file = join(root, "file")
    const link = join(root, "link")
    const dangling = join(root, "dangling")
    const missing = join(root, "missing")
    const missingParent = join(root, "no-such-dir/file")
    const underFile = join(root, "plain/child")
    const dir = join(root, "dir")
    writeFileSync(file, "secret", { mode: 0o600 })
    writeFileSync(join(root, "plain"), "plain")
    symlinkSync(victim, link)
    symlinkSync(join(outside, "nothing"), dangling)
    mkdirSync(dir)
    writeFileSync(join(dir, "inside"), "inside")
    const paths = [file, link, dangling, missing, missingParent, underFile, dir]
    expect(removeFiles(nodeWriterFs, caller, paths)).toEqual([
      { path: file, status: "removed" },
      { path: link, status: "removed" },
      { path: dangling, status: "removed" },
      { path: missing, status: "absent" },
      { path: missingParent, status: "absent" },
      { path: underFile, status: "absent" },
      { path: dir, status: "skipped", reason: "is a directory" }
    ])
    expect(existsSync(file)).toBe(false)
    expect(() => lstatSync(link)).toThrow()
    expect(() => lstatSync(dangling)).toThrow()
    expect(readFileSync(victim, "utf8")).toBe("victim")
    expect(readFileSync(join(dir, "inside"), "utf8")).toBe("inside")
    expect(readFileSync(join(root, "plain"), "utf8")).toBe("plain")

    expect(removeFiles(nodeWriterFs, caller, paths).map((outcome) => outcome.status)).toEqual([
      "absent", "absent", "absent", "absent", "absent", "absent", "skipped"
    ])
  })

  it("skips a FIFO and leaves it in place", () => {
    const root = makeRoot()
    const fifo = join(root, "fifo")
    execFileSync("mkfifo", [fifo])
    expect(removeFiles(nodeWriterFs, caller, [fifo])).toEqual([{ path: fifo, status: "skipped", reason: "is not a regular file" }])
    expect(lstatSync(fifo).isFIFO()).toBe(true)
  })

  it("removes every other file when one removal fails, then reports the failure", () => {
    const root = makeRoot()
    const names = ["one", "two", "three"].map((name) => join(root, name))
    for (const path of names) writeFileSync(path, "x")
    const { fsx } = failingFs(0)
    const failure = failureOf(() => removeFiles(fsx, caller, names))
    expect(failure).toBeInstanceOf(Error)
    expect(failure instanceof Error ? failure.message : "").toContain(names[0])
    expect(existsSync(names[0] ?? "")).toBe(true)
    expect(existsSync(names[1] ?? "")).toBe(false)
    expect(existsSync(names[2] ?? "")).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------

describe("makeSecretWriter", () => {
  it.effect("commits and removes through the Effect API", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      const writer = makeSecretWriter(nodeWriterFs, caller)
      const path = join(root, "sub/token")
      expect(yield* writer.commit([planned(path, "value")])).toEqual([{ path, status: "written" }])
      expect(yield* writer.commit([planned(path, "value")])).toEqual([{ path, status: "unchanged" }])
      expect(readFileSync(path, "utf8")).toBe("value")
      expect(yield* writer.remove([path])).toEqual([{ path, status: "removed" }])
      expect(yield* writer.remove([path])).toEqual([{ path, status: "absent" }])
    }))

  it.effect("fails with an OutputError naming the target when a rename fails, and keeps the old file", () =>
    Effect.gen(function*() {
      const scenario: Scenario = {
        existing: [{ path: "token", content: "old", mode: 0o600 }],
        commit: [{ path: "token", content: "new" }]
      }
      const renameAt = callsOf(scenario).findIndex((call) => call.op === "rename")
      expect(renameAt).toBeGreaterThan(0)
      const root = makeRoot()
      setUp(root, scenario)
      const path = join(root, "token")
      const exit = yield* Effect.exit(makeSecretWriter(failingFs(renameAt).fsx, caller).commit(plannedFor(root, scenario)))
      if (Exit.isSuccess(exit)) throw new Error("the commit succeeded")
      const error = Option.getOrThrow(Cause.failureOption(exit.cause))
      expect(error).toBeInstanceOf(OutputError)
      expect(error.path).toBe(path)
      expect(error.reason).toBe("cannot replace (EIO)")
      expect(readFileSync(path, "utf8")).toBe("old")
      expect(tempFilesUnder(root)).toEqual([])
    }))

  it.effect("fails remove with an OutputError naming the path that could not be removed", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      const path = join(root, "token")
      writeFileSync(path, "x")
      const error = yield* Effect.flip(makeSecretWriter(failingFs(0).fsx, caller).remove([path]))
      expect(error).toBeInstanceOf(OutputError)
      expect(error.path).toBe(path)
      expect(error.reason).toMatch(/EIO/)
    }))
})

// ---------------------------------------------------------------------------------------------

describe.runIf(isRoot)("a root caller", () => {
  it.effect("refuses a directory others can write, and writes nothing there", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      const shared = join(root, "shared")
      mkdirSync(shared)
      chmodSync(shared, 0o777)
      const error = yield* Effect.flip(makeSecretWriter(nodeWriterFs, caller).commit([planned(join(shared, "token"), "x")]))
      expect(error.path).toBe(shared)
      expect(readdirSync(shared)).toEqual([])
    }))

  it.effect("refuses a directory owned by another user and removes the directory it created inside it", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      const theirs = join(root, "theirs")
      mkdirSync(theirs, { mode: 0o700 })
      chownSync(theirs, 54_321, 54_321)
      const error = yield* Effect.flip(makeSecretWriter(nodeWriterFs, caller).commit([planned(join(theirs, "new/token"), "x")]))
      expect(error).toBeInstanceOf(OutputError)
      expect(readdirSync(theirs)).toEqual([])
    }))

  it.effect("refuses a path through a symlink owned by another user", () =>
    Effect.gen(function*() {
      const root = makeRoot()
      mkdirSync(join(root, "real"), { mode: 0o700 })
      symlinkSync(join(root, "real"), join(root, "via"))
      const via = join(root, "via")
      execFileSync("chown", ["-h", "54321:54321", via])
      const error = yield* Effect.flip(makeSecretWriter(nodeWriterFs, caller).commit([planned(join(via, "token"), "x")]))
      expect(error.path).toBe(via)
      expect(readdirSync(join(root, "real"))).toEqual([])
    }))

  it("never creates or chmods anything below another user's directory, even if they swap in a symlink", () => {
    const root = makeRoot()
    const evil = join(root, "evil")
    mkdirSync(evil, { mode: 0o755 })
    chownSync(evil, 54_321, 54_321)
    const victim = join(root, "victim") // stands for /etc
    mkdirSync(victim, { mode: 0o755 })
    const sub = join(evil, "sub")
    // The other user's move, right after any mkdir of root's below their directory.
    const racing: WriterFs = {
      ...nodeWriterFs,
      mkdir: (path, mode) => {
        nodeWriterFs.mkdir(path, mode)
        if (path === sub) {
          rmSync(sub, { recursive: true })
          symlinkSync(victim, sub)
          execFileSync("chown", ["-h", "54321:54321", sub])
        }
      }
    }
    expect(() => commitFiles(racing, caller, [planned(join(sub, "token"), "x")])).toThrow(/belongs to uid 54321/)
    expect(lstatSync(victim).mode & 0o7777).toBe(0o755)
    expect(existsSync(sub)).toBe(false)
  })

  it("does not mkdir through another user's symlink before refusing it", () => {
    const root = makeRoot()
    const evil = join(root, "evil")
    mkdirSync(evil, { mode: 0o755 })
    chownSync(evil, 54_321, 54_321)
    const victim = join(root, "victim")
    mkdirSync(victim, { mode: 0o755 })
    symlinkSync(victim, join(evil, "sub"))
    execFileSync("chown", ["-h", "54321:54321", join(evil, "sub")])
    const made: Array<string> = []
    const watching: WriterFs = { ...nodeWriterFs, mkdir: (path, mode) => (made.push(path), nodeWriterFs.mkdir(path, mode)) }
    expect(() => commitFiles(watching, caller, [planned(join(evil, "sub/deeper/token"), "x")])).toThrow()
    expect(made).toEqual([])
    expect(readdirSync(victim)).toEqual([])
  })

  it("writes into a root-owned sticky world-writable directory", () => {
    const root = makeRoot()
    const sticky = join(root, "sticky")
    mkdirSync(sticky)
    chmodSync(sticky, 0o1777)
    commitFiles(nodeWriterFs, caller, [planned(join(sticky, "token"), "x")])
    expect(readFileSync(join(sticky, "token"), "utf8")).toBe("x")
  })

  it("refuses to remove from a directory others can write", () => {
    const root = makeRoot()
    const shared = join(root, "shared")
    mkdirSync(shared)
    writeFileSync(join(shared, "token"), "x")
    chmodSync(shared, 0o777)
    expect(() => removeFiles(nodeWriterFs, caller, [join(shared, "token")])).toThrow()
    expect(existsSync(join(shared, "token"))).toBe(true)
  })
})
