/**
 * fetch: every selected secret of the caller, resolved in one call, written all-or-nothing.
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { ReferencesUnresolved, SecretProvider } from "../services/SecretProvider.ts"
import { SecretWriter } from "../services/SecretWriter.ts"
import { prepareRun, type RunRequest } from "./prepare.ts"
import type { RunReport } from "./report.ts"

export const fetchSecrets = (request: RunRequest) =>
  Effect.gen(function*() {
    const { caller, plan, warnings } = yield* prepareRun(request)
    if (plan.entries.length === 0) {
      const empty: RunReport = { command: "fetch", user: caller.user, files: [], warnings }
      return empty
    }
    const provider = yield* SecretProvider
    const writer = yield* SecretWriter
    const secrets = yield* provider.resolveAll(plan.references)
    // A provider must answer every reference; one that does not gets no file written at all.
    const missing = plan.references.filter((reference) => !secrets.has(reference))
    if (missing.length > 0) {
      return yield* Effect.fail(new ReferencesUnresolved({
        failures: missing.map((reference) => ({ reference, reason: "the backend returned no value" }))
      }))
    }
    const outcomes = yield* writer.commit(plan.entries.map((entry) => ({
      path: entry.target,
      content: secrets.get(entry.reference) ?? Redacted.make("")
    })))
    const report: RunReport = {
      command: "fetch",
      user: caller.user,
      files: plan.entries.map((entry, i) => ({
        path: entry.target,
        reference: entry.reference,
        line: entry.line,
        status: outcomes[i]?.status ?? "failed"
      })),
      warnings
    }
    return report
  }).pipe(Effect.scoped)
