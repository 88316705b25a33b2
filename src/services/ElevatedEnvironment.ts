/**
 * Which process is elevated, and what its environment may hold. Plain functions with no Effect
 * imports, so that the entry point can apply them before loading anything else.
 */

export interface ProcessIds {
  readonly ruid: number
  readonly euid: number
  readonly rgid: number
  readonly egid: number
}

export const processIds = (): ProcessIds => ({
  ruid: process.getuid?.() ?? -1,
  euid: process.geteuid?.() ?? -1,
  rgid: process.getgid?.() ?? -1,
  egid: process.getegid?.() ?? -1
})

/** Set-user-ID or set-group-ID: the effective ids are not the caller's. */
export const isElevated = (ids: ProcessIds = processIds()): boolean => ids.ruid !== ids.euid || ids.rgid !== ids.egid

/**
 * Read by Node or libuv with plain getenv even in a set-user-ID process, before any of our code:
 * refusing to run is the only safe answer.
 */
const REFUSED_WHEN_ELEVATED: ReadonlyArray<string> = [
  "UV_USE_IO_URING", // io_uring rings keep the creator's credentials: async fs would stay op after the drop
  "NODE_TLS_REJECT_UNAUTHORIZED", // turns off certificate checks for the 1Password connection
  "NODE_V8_COVERAGE", // makes Node write coverage files (as op) to a path of the caller's choosing
  "NODE_DEBUG", // debug output of core modules, which may include request data
  "NODE_DEBUG_NATIVE", // the same for native code
  "NODE_CHANNEL_FD", // an IPC channel to a parent the caller controls
  "NODE_UNIQUE_ID", // cluster worker mode, which talks to a "primary" over that channel
  "UV_THREADPOOL_SIZE" // thread pool sizing the caller should not control in a privileged process
]

/** Kept when elevated; everything else is removed before any of our code reads the environment. */
const ALLOWED_WHEN_ELEVATED = new Set([
  "PATH", // nothing is executed, but a sane PATH keeps error messages of the platform sane
  "LANG", // message language of the platform
  "TERM", // whether the terminal understands colour
  "NO_COLOR", // the caller's wish for plain output
  "JOURNAL_STREAM", // tells that stderr is the journal (systemd units)
  "INVOCATION_ID", // the systemd unit invocation, for log correlation
  "OP_TAGS", // selection among the caller's own entries: harmless
  "OP_UNTAGGED", // likewise
  "OP_API_KEY_PATH", // kept only so that the override can be refused with a clear message
  "OP_MAP_FILE_PATH" // likewise
])

/**
 * The first variable that forbids an elevated run, if any. Node consumes two of them before any of
 * our code runs, so their effects are checked too: an IPC channel (NODE_CHANNEL_FD) and cluster
 * worker mode (NODE_UNIQUE_ID, which Node deletes from the environment once it has acted on it).
 */
export const refusedVariable = (env: NodeJS.ProcessEnv, hasChannel: boolean): string | undefined => {
  for (const name of Object.keys(env)) {
    if (REFUSED_WHEN_ELEVATED.includes(name) || name.startsWith("ICU_")) return name
  }
  if (hasChannel) return "NODE_CHANNEL_FD"
  // Loaded only here (an elevated run): the cluster module is not free to load.
  const cluster: unknown = process.getBuiltinModule("node:cluster")
  const isWorker = typeof cluster === "object" && cluster !== null && "isWorker" in cluster && cluster.isWorker === true
  return isWorker ? "NODE_UNIQUE_ID" : undefined
}

/** Removes every variable that is not on the allowlist (LC_* included). */
export const reduceEnvironment = (env: NodeJS.ProcessEnv): void => {
  for (const name of Object.keys(env)) {
    if (!ALLOWED_WHEN_ELEVATED.has(name) && !name.startsWith("LC_")) delete env[name]
  }
}
