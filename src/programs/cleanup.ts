/**
 * cleanup: removes the caller's selected secret files (for ExecStopPost=). Never loads a backend.
 */
import * as Effect from "effect/Effect"
import { SecretWriter } from "../services/SecretWriter.ts"
import { prepareRun, type RunRequest } from "./prepare.ts"
import type { RunReport } from "./report.ts"

export const cleanupSecrets = (request: RunRequest) =>
  Effect.gen(function*() {
    const { caller, plan, warnings } = yield* prepareRun(request)
    const writer = yield* SecretWriter
    const outcomes = yield* writer.remove(plan.entries.map((entry) => entry.target))
    const skipped = outcomes.filter((outcome) => outcome.status === "skipped")
    for (const outcome of skipped) yield* Effect.logWarning(`not removed: ${outcome.path} ${outcome.reason ?? ""}`.trim())
    const report: RunReport = {
      command: "cleanup",
      user: caller.user,
      files: plan.entries.map((entry, i) => {
        const outcome = outcomes[i]
        return {
          path: entry.target,
          reference: entry.reference,
          line: entry.line,
          status: outcome?.status ?? "failed",
          ...(outcome?.reason === undefined ? {} : { reason: outcome.reason })
        }
      }),
      warnings: [...warnings, ...skipped.map((outcome) => `not removed: ${outcome.path} ${outcome.reason ?? ""}`.trim())]
    }
    return report
  }).pipe(Effect.scoped)
