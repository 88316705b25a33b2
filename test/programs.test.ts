import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as FastCheck from "effect/FastCheck"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { cleanupSecrets } from "../src/programs/cleanup.ts"
import { fetchSecrets } from "../src/programs/fetch.ts"
import type { RunRequest } from "../src/programs/prepare.ts"
import { ElevatedReadTest, UnprivilegedTest } from "../src/services/Privileges.ts"
import { SecretProviderTest } from "../src/services/SecretProvider.ts"
import { SecretWriterTest } from "../src/services/SecretWriter.ts"
import { UserLockTest } from "../src/services/UserLock.ts"

const vault = {
  "op://V/db/password": "alice-db-secret",
  "op://V/api/token": "alice-api-secret",
  "op://V/bob/password": "bob-secret"
}

const mapfile = [
  "alice op://V/db/password db/password db",
  "alice op://V/api/token api_token web",
  "alice op://V/db/password db/password-copy db",
  "bob op://V/bob/password db/password",
  "bob this line is broken for bob"
].join("\n")

const request = (overrides: Partial<RunRequest> = {}): RunRequest => ({
  filter: { tags: [], untagged: false },
  secretsDir: Option.some("/s"),
  serialize: false,
  lockTimeout: Duration.seconds(1),
  ...overrides
})

const world = (text: string, user = "alice") => {
  const files = new Map<string, string>()
  const calls: Array<ReadonlyArray<string>> = []
  const locks: Array<string> = []
  const layer = Layer.mergeAll(
    ElevatedReadTest({
      mapfile: { path: "/etc/op-secret-manager/mapfile", bytes: new TextEncoder().encode(text), owner: 0, mode: 0o640 },
      credential: Option.none(),
      elevated: true
    }),
    UnprivilegedTest({ uid: 1000, gid: 1000, user }),
    SecretProviderTest(vault, calls),
    SecretWriterTest(files),
    UserLockTest(locks)
  )
  return { files, calls, locks, layer }
}

describe("fetchSecrets", () => {
  it.effect("resolves every selected reference in exactly one call, each reference once", () => {
    const w = world(mapfile)
    return Effect.gen(function*() {
      const report = yield* fetchSecrets(request())
      expect(w.calls).toEqual([["op://V/db/password", "op://V/api/token"]])
      expect(Object.fromEntries(w.files)).toEqual({
        "/s/db/password": "alice-db-secret",
        "/s/api_token": "alice-api-secret",
        "/s/db/password-copy": "alice-db-secret"
      })
      expect(report.files.map((f) => [f.line, f.status])).toEqual([[1, "written"], [2, "written"], [3, "written"]])
      expect(JSON.stringify(report)).not.toContain("secret\"")
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("writes nothing when one reference does not resolve, and names it", () => {
    const w = world(`${mapfile}\nalice op://V/missing/item gone`)
    return Effect.gen(function*() {
      const error = yield* Effect.flip(fetchSecrets(request()))
      expect(error._tag).toBe("ReferencesUnresolved")
      expect(error._tag === "ReferencesUnresolved" && error.failures.map((f) => f.reference)).toEqual(["op://V/missing/item"])
      expect(w.files.size).toBe(0)
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("selects by tags and never touches another user's entries", () => {
    const w = world(mapfile)
    return Effect.gen(function*() {
      yield* fetchSecrets(request({ filter: { tags: ["web"], untagged: false } }))
      expect([...w.files.keys()]).toEqual(["/s/api_token"])
      expect(w.calls).toEqual([["op://V/api/token"]])
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("warns and does nothing when the tags select none of the caller's entries", () => {
    const w = world(mapfile)
    return Effect.gen(function*() {
      const report = yield* fetchSecrets(request({ filter: { tags: ["nope"], untagged: false } }))
      expect(report.files).toEqual([])
      expect(report.warnings[0]).toMatch(/matches none of alice's 3 entries/)
      expect(w.calls).toEqual([])
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("refuses a caller who has no line in the mapfile", () => {
    const w = world(mapfile, "carol")
    return Effect.gen(function*() {
      const error = yield* Effect.flip(fetchSecrets(request()))
      expect(error._tag).toBe("CallerNotInMapfile")
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("fails on the caller's own malformed line, naming it, but skips other users' broken lines", () => {
    const w = world(`${mapfile}\nalice op://V/db/password`)
    return Effect.gen(function*() {
      const error = yield* Effect.flip(fetchSecrets(request()))
      expect(error._tag === "MapfileError" && error.problems).toEqual([{ line: 6, reason: "expected 3 or 4 fields, found 2" }])
      expect(w.files.size).toBe(0)
    }).pipe(Effect.provide(w.layer))
  })

  it.effect("fails when an invalid reference, a '..' path or two entries writing one file belong to the caller", () => {
    const cases: Array<[string, RegExp]> = [
      ["alice vault/item/field x", /invalid secret reference/],
      ["alice op://V/db/password ../escape", /'\.\.' segment/],
      ["alice op://V/api/token db/password", /writes the same file as line 1/]
    ]
    return Effect.forEach(cases, ([line, reason]) => {
      const w = world(`${mapfile}\n${line}`)
      return Effect.flip(fetchSecrets(request())).pipe(
        Effect.map((error) => {
          expect(error._tag).toBe("MapfileError")
          expect(error._tag === "MapfileError" && error.problems[0]?.reason).toMatch(reason)
          expect(w.files.size).toBe(0)
        }),
        Effect.provide(w.layer)
      )
    })
  })

  it.effect("takes the per-user lock beside the secrets directory with --serialize", () => {
    const w = world(mapfile)
    return Effect.gen(function*() {
      yield* fetchSecrets(request({ serialize: true, secretsDir: Option.some("/run/user/1000/secrets") }))
      expect(w.locks).toEqual(["/run/user/1000/op-secret-manager.lock"])
    }).pipe(Effect.provide(w.layer))
  })
})

describe("cleanupSecrets", () => {
  it.effect("removes only the caller's selected files and never resolves a secret", () => {
    const w = world(mapfile)
    return Effect.gen(function*() {
      w.files.set("/s/db/password", "old").set("/s/api_token", "old").set("/s/bob-file", "bob's")
      const report = yield* cleanupSecrets(request({ filter: { tags: ["db"], untagged: false } }))
      expect([...w.files.keys()]).toEqual(["/s/api_token", "/s/bob-file"])
      expect(report.files.map((f) => f.status)).toEqual(["removed", "absent"])
      expect(w.calls).toEqual([])
    }).pipe(Effect.provide(w.layer))
  })
})

describe("one backend call per run", () => {
  it.prop(
    "resolves any number of entries in exactly one resolveAll, each reference once",
    [FastCheck.array(FastCheck.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 300 })],
    ([picks]) => {
      const references = picks.map((n) => `op://V/item ${n}/password`)
      const text = references.map((ref, i) => `alice "${ref}" file-${i}`).join("\n")
      const secrets = Object.fromEntries(references.map((ref) => [ref, `value of ${ref}`]))
      const calls: Array<ReadonlyArray<string>> = []
      const layer = Layer.mergeAll(
        ElevatedReadTest({ mapfile: { path: "/m", bytes: new TextEncoder().encode(text), owner: 0, mode: 0o640 }, credential: Option.none(), elevated: true }),
        UnprivilegedTest({ uid: 1000, gid: 1000, user: "alice" }),
        SecretProviderTest(secrets, calls),
        SecretWriterTest(),
        UserLockTest()
      )
      Effect.runSync(fetchSecrets(request()).pipe(Effect.provide(layer)))
      expect(calls).toEqual([[...new Set(references)]])
    },
    { fastCheck: { numRuns: 50 } }
  )
})
