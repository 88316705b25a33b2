/**
 * From mapfile bytes to the caller's plan: select the caller's entries, validate them, resolve and
 * dedupe their targets. Shared by fetch and cleanup, so both apply the same path rules. Pure.
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import { type MapEntry, matchesTags, parseMapfile, type TagFilter } from "../services/Mapfile.ts"
import { pathProblem, resolveTarget } from "../services/Paths.ts"
import { referenceProblem } from "../services/SecretReference.ts"

export interface MapfileProblem {
  readonly line: number
  readonly reason: string
}

/** The caller's own lines are wrong; nothing is written (exit 65). Other users' lines are never shown. */
export class MapfileError extends Data.TaggedError("MapfileError")<{
  readonly path: string
  readonly problems: ReadonlyArray<MapfileProblem>
}> {}

/** The caller has no line at all: the mapfile does not serve this user (exit 77). */
export class CallerNotInMapfile extends Data.TaggedError("CallerNotInMapfile")<{
  readonly user: string
  readonly path: string
}> {}

export interface PlannedEntry {
  readonly line: number
  readonly reference: string
  readonly target: string
  readonly tags: ReadonlyArray<string>
}

export interface Plan {
  readonly entries: ReadonlyArray<PlannedEntry>
  /** Each reference once, in first-use order: one resolveAll call gets them all. */
  readonly references: ReadonlyArray<string>
  readonly callerEntries: number
  /** Malformed lines of other users: skipped, counted for -v, never shown. */
  readonly othersMalformed: number
}

export interface PlanRequest {
  readonly mapfile: Uint8Array
  readonly mapfilePath: string
  readonly user: string
  readonly filter: TagFilter
  readonly secretsDir: string
}

const entryProblem = (entry: MapEntry): string | undefined => {
  const reference = referenceProblem(entry.reference)
  if (reference !== undefined) return `invalid secret reference: ${reference}`
  const path = pathProblem(entry.path)
  return path === undefined ? undefined : `invalid path: ${path}`
}

export const planFor = (request: PlanRequest): Either.Either<Plan, MapfileError | CallerNotInMapfile> => {
  const { entries, malformed } = parseMapfile(request.mapfile)
  const own = entries.filter((entry) => entry.user === request.user)
  const ownMalformed = malformed.filter((line) => line.user === request.user)
  if (own.length === 0 && ownMalformed.length === 0) {
    return Either.left(new CallerNotInMapfile({ user: request.user, path: request.mapfilePath }))
  }
  const problems: Array<MapfileProblem> = ownMalformed.map(({ line, reason }) => ({ line, reason }))
  for (const entry of own) {
    const reason = entryProblem(entry)
    if (reason !== undefined) problems.push({ line: entry.line, reason })
  }
  const selected: Array<PlannedEntry> = []
  const byTarget = new Map<string, number>()
  if (problems.length === 0) {
    for (const entry of own) {
      if (!matchesTags(entry.tags, request.filter)) continue
      const target = resolveTarget(request.secretsDir, entry.path)
      const earlier = byTarget.get(target)
      if (earlier !== undefined) {
        problems.push({ line: entry.line, reason: `writes the same file as line ${earlier} (${target})` })
        continue
      }
      byTarget.set(target, entry.line)
      selected.push({ line: entry.line, reference: entry.reference, target, tags: entry.tags })
    }
  }
  if (problems.length > 0) {
    return Either.left(new MapfileError({ path: request.mapfilePath, problems: problems.sort((a, b) => a.line - b.line) }))
  }
  return Either.right({
    entries: selected,
    references: [...new Set(selected.map((entry) => entry.reference))],
    callerEntries: own.length,
    othersMalformed: malformed.length - ownMalformed.length
  })
}
