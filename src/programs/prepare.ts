/**
 * The part fetch and cleanup share after the drop: whose run this is, where their secrets go,
 * which entries are selected, and (with --serialize) the per-user lock.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { TagFilter } from "../services/Mapfile.ts"
import { defaultSecretsDir, lockFilePath, resolveSecretsDir } from "../services/Paths.ts"
import { ElevatedRead, Unprivileged } from "../services/Privileges.ts"
import { UserLock } from "../services/UserLock.ts"
import { planFor } from "./plan.ts"

export interface RunRequest {
  readonly filter: TagFilter
  readonly secretsDir: Option.Option<string>
  readonly serialize: boolean
  readonly lockTimeout: Duration.Duration
}

export const prepareRun = (request: RunRequest) =>
  Effect.gen(function*() {
    const { mapfile } = yield* ElevatedRead
    const { caller, drop } = yield* Unprivileged
    yield* Effect.logDebug(
      `privileges: uid ${drop.from.uid}->${drop.to.uid} gid ${drop.from.gid}->${drop.to.gid}; ` +
        `${drop.threads} threads verified; regain: ${drop.regain}; async open: ${drop.asyncOpen}; ` +
        `dumpable: ${drop.dumpable ? 1 : 0}; core limit: ${drop.coreLimit}`
    )
    const secretsDir = Option.match(request.secretsDir, {
      onNone: () => defaultSecretsDir(caller.uid),
      onSome: (dir) => resolveSecretsDir(dir, process.cwd())
    })
    const plan = yield* planFor({ mapfile: mapfile.bytes, mapfilePath: mapfile.path, user: caller.user, filter: request.filter, secretsDir })
    yield* Effect.logDebug(
      `mapfile ${mapfile.path}: ${plan.callerEntries} entries for ${caller.user}, ${plan.entries.length} selected, ` +
        `${plan.references.length} distinct references; ${plan.othersMalformed} malformed lines of other users skipped`
    )
    const warnings: Array<string> = []
    if (plan.entries.length === 0) {
      const warning = `the tag selection matches none of ${caller.user}'s ${plan.callerEntries} entries; nothing to do`
      warnings.push(warning)
      yield* Effect.logWarning(warning)
    } else if (request.serialize) {
      const lock = yield* UserLock
      const path = lockFilePath(secretsDir)
      yield* lock.acquire(path, request.lockTimeout)
      yield* Effect.logDebug(`holding ${path}`)
    }
    return { caller, plan, warnings }
  })
