/**
 * The order of the phases is a type error to get wrong: the live writer and provider require the
 * `Unprivileged` witness, which only the drop (or its test layer, in Privileges.ts) can make.
 * `tsc -p .` (part of npm test) fails if any @ts-expect-error below stops being an error.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ElevatedReadLive, UnprivilegedCaller, UnprivilegedLive } from "../src/services/Privileges.ts"
import { SecretProvider, SecretProviderLive } from "../src/services/SecretProvider.ts"
import { SecretWriter, SecretWriterLive } from "../src/services/SecretWriter.ts"
import * as Option from "effect/Option"

const request = { mapFilePath: Option.none(), apiKeyPath: Option.none(), readCredential: true }

const needsWriter = Effect.flatMap(SecretWriter, () => Effect.void)
const needsProvider = Effect.flatMap(SecretProvider, () => Effect.void)

// Wired after the drop: compiles.
export const wired: Effect.Effect<void, unknown, never> = needsWriter.pipe(
  Effect.zipRight(needsProvider),
  Effect.provide(Layer.mergeAll(SecretWriterLive, SecretProviderLive).pipe(
    Layer.provideMerge(UnprivilegedLive),
    Layer.provideMerge(ElevatedReadLive(request))
  ))
)

// @ts-expect-error the live writer without the drop still requires UnprivilegedCaller
export const writerWithoutDrop: Effect.Effect<void, unknown, never> = needsWriter.pipe(Effect.provide(SecretWriterLive))

// @ts-expect-error the live provider with only the elevated read still requires UnprivilegedCaller
export const providerWithoutDrop: Effect.Effect<void, unknown, never> = needsProvider.pipe(
  Effect.provide(SecretProviderLive.pipe(Layer.provide(ElevatedReadLive(request))))
)

// Never called: only its type matters.
export const forge = () =>
  // @ts-expect-error the witness has a private constructor
  new UnprivilegedCaller({ uid: 0, gid: 0, user: "root" }, undefined)

// @ts-expect-error a look-alike object is not a witness: the class has a private brand
export const lookAlike: UnprivilegedCaller = { caller: { uid: 0, gid: 0, user: "root" }, drop: undefined }

describe("phase ordering in the types", () => {
  it("is checked by tsc; this file only has to compile with its expected errors", () => {
    expect(typeof wired).toBe("object")
  })
})
