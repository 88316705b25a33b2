import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { type Credential, ElevatedReadTest, UnprivilegedTest } from "../src/services/Privileges.ts"
import { SecretProvider, SecretProviderLive, sdkFailure } from "../src/services/SecretProvider.ts"

const providerWith = (credential: Credential) =>
  SecretProviderLive.pipe(
    Layer.provide(UnprivilegedTest({ uid: 1000, gid: 1000, user: "alice" })),
    Layer.provide(ElevatedReadTest({
      mapfile: { path: "/m", bytes: new Uint8Array(), owner: 0, mode: 0o640 },
      credential: Option.some(credential),
      elevated: false
    }))
  )

const vaultFile = (text: string): Credential => ({
  _tag: "VaultFile",
  path: "/etc/op-secret-manager/vault.json",
  contents: Redacted.make(new TextEncoder().encode(text))
})

const resolveAll = (references: ReadonlyArray<string>) => Effect.flatMap(SecretProvider, (p) => p.resolveAll(references))

describe("vault file backend", () => {
  it.effect("resolves references to redacted values", () =>
    Effect.gen(function*() {
      const secrets = yield* resolveAll(["op://V/i/a", "op://V/i/b", "op://V/i/a"])
      expect([...secrets.keys()]).toEqual(["op://V/i/a", "op://V/i/b"])
      expect(Redacted.value(secrets.get("op://V/i/a")!)).toBe("one")
      expect(String(secrets.get("op://V/i/a"))).not.toContain("one")
    }).pipe(Effect.provide(providerWith(vaultFile(JSON.stringify({ "op://V/i/a": "one", "op://V/i/b": "two" }))))))

  it.effect("names every missing reference", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(resolveAll(["op://V/i/a", "op://V/x/1", "op://V/x/2"]))
      expect(error._tag === "ReferencesUnresolved" && error.failures.map((f) => f.reference)).toEqual(["op://V/x/1", "op://V/x/2"])
    }).pipe(Effect.provide(providerWith(vaultFile(JSON.stringify({ "op://V/i/a": "one" }))))))

  it.effect("reports broken JSON without quoting any of it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(resolveAll(["op://V/i/a"]))
      expect(error._tag).toBe("InvalidVaultFile")
      expect(JSON.stringify(error)).not.toContain("hunter2")
    }).pipe(Effect.provide(providerWith(vaultFile(`{"op://V/i/a": hunter2-secret}`)))))

  it.effect("refuses values that are not strings", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(resolveAll(["op://V/i/a"]))
      expect(error._tag === "InvalidVaultFile" && error.reason).toMatch(/op:\/\/V\/i\/a is not a string/)
    }).pipe(Effect.provide(providerWith(vaultFile(`{"op://V/i/a": 42}`)))))
})

describe("1Password service account backend (the real SDK, no network)", () => {
  const serviceAccount = (token: string): Credential => ({ _tag: "ServiceAccount", path: "/etc/op-secret-manager/api", token: Redacted.make(token) })

  it.effect("maps a malformed token to InvalidToken without echoing the token", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(resolveAll(["op://V/i/f"]))
      expect(error._tag).toBe("InvalidToken")
      expect(JSON.stringify(error)).not.toContain("ops_notbase64!!secretpart")
    }).pipe(Effect.provide(providerWith(serviceAccount("ops_notbase64!!secretpart")))), 60_000)

  it.effect("maps a well-encoded but invalid token to InvalidToken", () =>
    Effect.gen(function*() {
      const token = `ops_${Buffer.from(JSON.stringify({ signInAddress: "my.1password.com" })).toString("base64")}`
      const error = yield* Effect.flip(resolveAll(["op://V/i/f"]))
      expect(error._tag).toBe("InvalidToken")
      expect(JSON.stringify(error)).not.toContain(token)
    }).pipe(Effect.provide(providerWith(serviceAccount(`ops_${Buffer.from(JSON.stringify({ signInAddress: "my.1password.com" })).toString("base64")}`)))), 60_000)
})

describe("1Password SDK failures", () => {
  const token = Redacted.make("ops_SECRET-TOKEN-PART")

  it("maps the SDK's own error classes and a network failure to their exit classes, never echoing the token", async () => {
    const sdk = await import("@1password/sdk")
    const rateLimited = sdkFailure("/api", token, new sdk.RateLimitExceededError("rate limit exceeded"))
    const expired = sdkFailure("/api", token, new sdk.AuthExpiredError("auth expired"))
    const network = sdkFailure("/api", token, new TypeError("fetch failed: ops_SECRET-TOKEN-PART rejected"))
    expect([rateLimited._tag, expired._tag, network._tag]).toEqual(["RateLimited", "InvalidToken", "BackendUnavailable"])
    expect(JSON.stringify([rateLimited, expired, network])).not.toContain("SECRET-TOKEN-PART")
  })
})
