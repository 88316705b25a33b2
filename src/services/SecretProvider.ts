/**
 * SecretProvider: turns secret references into values, all of them in one `resolveAll` call per
 * run (each call spends the service account's request quota). The credential read in the elevated
 * phase chooses the backend: a 1Password service account token, or a local vault file (a JSON
 * object from references to values) for the demo, the tests and air-gapped hosts.
 *
 * Values only ever travel as `Redacted`. Error messages name references, never values: in
 * particular a vault file's JSON error is reported without the parser's own message, which
 * quotes the input.
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { version } from "../buildInfo.ts"
import { type Credential, ElevatedRead, Unprivileged } from "./Privileges.ts"

export interface UnresolvedReference {
  readonly reference: string
  readonly reason: string
}

/** Some references did not resolve; nothing is written (exit 69). */
export class ReferencesUnresolved extends Data.TaggedError("ReferencesUnresolved")<{
  readonly failures: ReadonlyArray<UnresolvedReference>
}> {}

/** The backend could not be reached or failed as a whole (exit 69). */
export class BackendUnavailable extends Data.TaggedError("BackendUnavailable")<{
  readonly reason: string
}> {}

/** 1Password's rate limit: try again later (exit 75). */
export class RateLimited extends Data.TaggedError("RateLimited")<{
  readonly reason: string
}> {}

/** The token is malformed, invalid or expired (exit 78). */
export class InvalidToken extends Data.TaggedError("InvalidToken")<{
  readonly path: string
  readonly reason: string
}> {}

/** The vault file is not a JSON object of strings (exit 78). */
export class InvalidVaultFile extends Data.TaggedError("InvalidVaultFile")<{
  readonly path: string
  readonly reason: string
}> {}

export type SecretProviderError = ReferencesUnresolved | BackendUnavailable | RateLimited | InvalidToken | InvalidVaultFile

export type ResolvedSecrets = ReadonlyMap<string, Redacted.Redacted<string>>

export class SecretProvider extends Context.Tag("op-secret-manager/SecretProvider")<SecretProvider, {
  readonly resolveAll: (references: ReadonlyArray<string>) => Effect.Effect<ResolvedSecrets, SecretProviderError>
}>() {}

// ---------------------------------------------------------------------------------------------
// Local vault file

const decodeVault = (path: string, contents: Uint8Array): Effect.Effect<ReadonlyMap<string, string>, InvalidVaultFile> =>
  Effect.suspend(() => {
    let parsed: unknown
    try {
      parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(contents))
    } catch {
      // The parser's message quotes the input, which is secret: say only what is wrong.
      return Effect.fail(new InvalidVaultFile({ path, reason: "is not valid UTF-8 JSON" }))
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      return Effect.fail(new InvalidVaultFile({ path, reason: "must hold one JSON object mapping references to strings" }))
    }
    const vault = new Map<string, string>()
    for (const [reference, value] of Object.entries(parsed)) {
      if (typeof value !== "string") {
        return Effect.fail(new InvalidVaultFile({ path, reason: `the value of ${reference} is not a string` }))
      }
      vault.set(reference, value)
    }
    return Effect.succeed(vault)
  })

const vaultFileProvider = (path: string, contents: Redacted.Redacted<Uint8Array>) =>
  Effect.gen(function*() {
    const vault = yield* Effect.cached(decodeVault(path, Redacted.value(contents)))
    return SecretProvider.of({
      resolveAll: (references) =>
        Effect.flatMap(vault, (entries) => {
          const resolved = new Map<string, Redacted.Redacted<string>>()
          const failures: Array<UnresolvedReference> = []
          for (const reference of new Set(references)) {
            const value = entries.get(reference)
            if (value === undefined) failures.push({ reference, reason: "not found in the vault file" })
            else resolved.set(reference, Redacted.make(value))
          }
          return failures.length > 0 ? Effect.fail(new ReferencesUnresolved({ failures })) : Effect.succeed(resolved)
        })
    })
  })

// ---------------------------------------------------------------------------------------------
// 1Password service account

/** The SDK has no timeout of its own; ExecStartPre= should fail with a reason, not hang the unit. */
export const sdkTimeout = Duration.seconds(60)

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/** Classifies an SDK failure; exported for tests. */
export const sdkFailure = (path: string, token: Redacted.Redacted<string>, error: unknown): SecretProviderError => {
  // By class name: in the single executable the SDK is bundled, and a bundler may suffix a class
  // name to avoid a clash (RateLimitExceededError2), hence the prefix test.
  const name = error instanceof Error ? error.constructor.name : ""
  // Never let the token reach a message, whatever the SDK puts in its errors.
  const reason = messageOf(error).split(Redacted.value(token)).join("<token>")
  if (name.startsWith("RateLimitExceededError")) return new RateLimited({ reason })
  if (name.startsWith("AuthExpiredError") || /invalid service account token|service account token had invalid format/i.test(reason)) {
    return new InvalidToken({ path, reason })
  }
  return new BackendUnavailable({ reason })
}

const serviceAccountProvider = (path: string, token: Redacted.Redacted<string>) =>
  SecretProvider.of({
    resolveAll: (references) =>
      Effect.logDebug("loading the 1Password SDK").pipe(Effect.zipRight(Effect.tryPromise({
        try: async () => {
          // Loaded here, after the drop and only when a secret is needed: 14 MB of WASM.
          const sdk = await import("@1password/sdk")
          const client = await sdk.createClient({
            auth: Redacted.value(token),
            integrationName: "op-secret-manager",
            integrationVersion: version
          })
          return client.secrets.resolveAll([...new Set(references)])
        },
        catch: (error) => sdkFailure(path, token, error)
      }))).pipe(
        Effect.timeoutFail({
          duration: sdkTimeout,
          onTimeout: () => new BackendUnavailable({ reason: `1Password did not answer within ${Duration.format(sdkTimeout)}` })
        }),
        Effect.flatMap(({ individualResponses }) => {
          const resolved = new Map<string, Redacted.Redacted<string>>()
          const failures: Array<UnresolvedReference> = []
          for (const reference of new Set(references)) {
            const response = individualResponses[reference]
            const secret = response?.content?.secret
            if (secret !== undefined && response?.error === undefined) resolved.set(reference, Redacted.make(secret))
            else failures.push({ reference, reason: response?.error?.type ?? "no answer for this reference" })
          }
          return failures.length > 0 ? Effect.fail(new ReferencesUnresolved({ failures })) : Effect.succeed(resolved)
        })
      )
  })

// ---------------------------------------------------------------------------------------------
// Layers

const providerFor = (credential: Credential) =>
  credential._tag === "VaultFile"
    ? vaultFileProvider(credential.path, credential.contents)
    : Effect.succeed(serviceAccountProvider(credential.path, credential.token))

/** Requires the drop: no backend is contacted and no vault is parsed with the service account's ids. */
export const SecretProviderLive: Layer.Layer<SecretProvider, never, ElevatedRead | typeof Unprivileged.Service> = Layer.effect(
  SecretProvider,
  Effect.gen(function*() {
    yield* Unprivileged
    const { credential } = yield* ElevatedRead
    return yield* Option.match(credential, {
      onNone: () =>
        Effect.succeed(SecretProvider.of({
          resolveAll: () => Effect.fail(new BackendUnavailable({ reason: "no credential was read for this command" }))
        })),
      onSome: providerFor
    })
  })
)

/** A provider over fixed values that records every `resolveAll` call it receives. */
export const SecretProviderTest = (
  secrets: Readonly<Record<string, string>>,
  calls: Array<ReadonlyArray<string>> = []
): Layer.Layer<SecretProvider> =>
  Layer.effect(
    SecretProvider,
    Effect.map(vaultFileProvider("test", Redacted.make(new TextEncoder().encode(JSON.stringify(secrets)))), (provider) =>
      SecretProvider.of({
        resolveAll: (references) => Effect.suspend(() => {
          calls.push([...references])
          return provider.resolveAll(references)
        })
      }))
  )
