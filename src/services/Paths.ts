/**
 * Where a mapfile entry is written. Pure path rules, shared by fetch and cleanup:
 * relative entries resolve under the secrets directory and can never leave it; absolute entries
 * are taken as written (they are created with the caller's own permissions). A `..` segment or a
 * NUL byte is refused anywhere, so no entry can name a file through a parent reference.
 */
import { posix } from "node:path"

export const defaultSecretsDir = (uid: number): string => `/run/user/${uid}/secrets`

/** Why a mapfile path is unusable, or undefined when it is fine. */
export const pathProblem = (path: string): string | undefined => {
  if (path.length === 0) return "the path is empty"
  if (path.includes("\0")) return "the path contains a NUL byte"
  if (path.split("/").includes("..")) return "the path contains a '..' segment"
  if (path.endsWith("/") || path.endsWith("/.") || path === ".") return "the path names a directory, not a file"
  return undefined
}

/** The absolute target of a valid entry path (see pathProblem). */
export const resolveTarget = (secretsDir: string, path: string): string =>
  posix.normalize(path.startsWith("/") ? path : posix.join(secretsDir, path))

/** The secrets directory given on the command line, made absolute against the working directory. */
export const resolveSecretsDir = (dir: string, cwd: string): string => posix.resolve(cwd, dir)

/** The lock file of --serialize: beside the secrets directory, like the original's per-user lock. */
export const lockFilePath = (secretsDir: string): string => posix.join(posix.dirname(secretsDir), "op-secret-manager.lock")
