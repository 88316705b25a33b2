/**
 * check: lints a whole mapfile as an administrator wants before deploying it. Errors (exit 65):
 * malformed lines, invalid references, unusable paths, two entries of one user writing one file.
 * Warnings: users that do not exist on this host (through NSS, so LDAP/SSSD users count), tags
 * used by a single entry (likely typos) and tags that look like paths (an unquoted field with spaces). Never loads the SDK, never touches the network.
 *
 * A caller other than root only sees findings about their own lines (the rest is counted): the
 * mapfile is the administrator's, and other users' lines are not theirs to read.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { libc } from "../native/libc.ts"
import { parseMapfile } from "../services/Mapfile.ts"
import { pathProblem, resolveTarget } from "../services/Paths.ts"
import { ElevatedRead, Unprivileged } from "../services/Privileges.ts"
import { referenceProblem } from "../services/SecretReference.ts"

export interface Finding {
  readonly severity: "error" | "warning"
  readonly line: number | undefined
  readonly user: string | undefined
  readonly message: string
}

export interface CheckReport {
  readonly path: string
  readonly entries: number
  readonly users: number
  readonly findings: ReadonlyArray<Finding>
  /** Findings about other users' lines, withheld from a caller who is not root. */
  readonly withheld: number
}

/** The mapfile has errors (exit 65); the findings were printed before. */
export class MapfileCheckFailed extends Data.TaggedError("MapfileCheckFailed")<{
  readonly path: string
  readonly errors: number
}> {}

export interface LintOptions {
  readonly userExists: (name: string) => boolean
  /** Show only this user's findings (a caller who is not root). */
  readonly onlyUser: string | undefined
}

export const lintMapfile = (bytes: Uint8Array, path: string, options: LintOptions): CheckReport => {
  const { entries, malformed } = parseMapfile(bytes)
  const findings: Array<Finding> = malformed.map(({ line, user, reason }) => ({ severity: "error", line, user, message: reason }))
  const targets = new Map<string, number>()
  const tagLines = new Map<string, Array<number>>()
  const userLines = new Map<string, Array<number>>()
  for (const entry of entries) {
    const error = (message: string) => findings.push({ severity: "error", line: entry.line, user: entry.user, message })
    userLines.set(entry.user, [...(userLines.get(entry.user) ?? []), entry.line])
    // A reference or path with spaces that is not quoted shifts the fields: the path lands in tags.
    for (const tag of entry.tags) {
      if (tag.includes("/")) {
        findings.push({ severity: "warning", line: entry.line, user: entry.user, message: `tag "${tag}" looks like a path: does a reference or path with spaces need double quotes?` })
      }
    }
    for (const tag of entry.tags) tagLines.set(tag, [...(tagLines.get(tag) ?? []), entry.line])
    const reference = referenceProblem(entry.reference)
    if (reference !== undefined) error(`invalid secret reference ${JSON.stringify(entry.reference)}: ${reference}`)
    const problem = pathProblem(entry.path)
    if (problem !== undefined) {
      error(`invalid path: ${problem}`)
      continue
    }
    // Relative paths of one user share that user's secrets directory; the placeholder stands for it.
    const key = `${entry.user}\0${resolveTarget(`/run/user/<${entry.user}>/secrets`, entry.path)}`
    const earlier = targets.get(key)
    if (earlier !== undefined) error(`writes the same file as line ${earlier} (${entry.path})`)
    else targets.set(key, entry.line)
  }
  for (const [user, lines] of userLines) {
    if (!options.userExists(user)) {
      findings.push({ severity: "warning", line: lines[0], user, message: `user ${user} does not exist on this host (lines ${lines.join(", ")})` })
    }
  }
  for (const [tag, lines] of tagLines) {
    if (lines.length === 1) {
      const line = lines[0]
      const user = entries.find((entry) => entry.line === line)?.user
      findings.push({ severity: "warning", line, user, message: `tag "${tag}" is used by this entry only (a typo?)` })
    }
  }
  const sorted = findings.sort((a, b) => (a.line ?? 0) - (b.line ?? 0))
  const visible = options.onlyUser === undefined ? sorted : sorted.filter((finding) => finding.user === options.onlyUser)
  return { path, entries: entries.length, users: userLines.size, findings: visible, withheld: sorted.length - visible.length }
}

export const checkMapfile = Effect.gen(function*() {
  const { mapfile, elevated } = yield* ElevatedRead
  const { caller } = yield* Unprivileged
  const report = lintMapfile(mapfile.bytes, mapfile.path, {
    userExists: (name) => libc().userExists(name),
    // Reading the administrator's file through the set-user-ID bit: only your own lines.
    onlyUser: elevated && caller.uid !== 0 ? caller.user : undefined
  })
  return report
})

export const checkLines = (report: CheckReport): Array<string> => {
  const errors = report.findings.filter((f) => f.severity === "error").length
  const warnings = report.findings.length - errors
  return [
    ...report.findings.map((f) => `${f.severity}: ${report.path}${f.line === undefined ? "" : ` line ${f.line}`}: ${f.message}`),
    `${report.path}: ${report.entries} entries for ${report.users} users; ${errors} errors, ${warnings} warnings` +
      (report.withheld > 0 ? ` (${report.withheld} findings about other users' lines not shown; run as root)` : "")
  ]
}
