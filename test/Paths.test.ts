import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { posix } from "node:path"
import { defaultSecretsDir, lockFilePath, pathProblem, resolveTarget } from "../src/services/Paths.ts"
import { isValidReference, referenceProblem } from "../src/services/SecretReference.ts"

describe("path rules", () => {
  it("refuses '..' segments, NUL bytes, empty paths and directory names", () => {
    expect(pathProblem("../x")).toMatch(/'\.\.'/)
    expect(pathProblem("a/../../x")).toMatch(/'\.\.'/)
    expect(pathProblem("/etc/../shadow")).toMatch(/'\.\.'/)
    expect(pathProblem("a\0b")).toMatch(/NUL/)
    expect(pathProblem("")).toMatch(/empty/)
    expect(pathProblem("dir/")).toMatch(/directory/)
    expect(pathProblem(".")).toMatch(/directory/)
    expect(pathProblem("a..b/..c")).toBeUndefined()
  })

  it("resolves relative paths under the secrets directory and keeps absolute ones", () => {
    expect(resolveTarget("/run/user/1000/secrets", "db/password")).toBe("/run/user/1000/secrets/db/password")
    expect(resolveTarget("/run/user/1000/secrets", "./a//b")).toBe("/run/user/1000/secrets/a/b")
    expect(resolveTarget("/run/user/1000/secrets", "/etc/app//token")).toBe("/etc/app/token")
    expect(defaultSecretsDir(1000)).toBe("/run/user/1000/secrets")
    expect(lockFilePath("/run/user/1000/secrets")).toBe("/run/user/1000/op-secret-manager.lock")
  })

  const segment = FastCheck.constantFrom("a", "b", ".", "..", "", "x y", "...", "..a", "\0")
  const relative = FastCheck.array(segment, { minLength: 1, maxLength: 6 }).map((parts) => parts.join("/")).filter((p) => !p.startsWith("/"))

  it.prop("a valid relative entry never leaves the secrets directory", [relative], ([path]) => {
    const dir = "/run/user/1000/secrets"
    if (pathProblem(path) !== undefined) return
    const target = resolveTarget(dir, path)
    expect(target.startsWith(`${dir}/`)).toBe(true)
    expect(posix.relative(dir, target).split("/")).not.toContain("..")
  })
})

describe("secret references", () => {
  it("accepts op://vault/item/[section/]field with the documented queries", () => {
    for (const ok of [
      "op://Vault/item/field",
      "op://Prod Vault/My DB/section/password",
      "op://v/i/one-time password?attribute=otp",
      "op://v/i/f?attribute=totp",
      "op://v/i/private key?ssh-format=openssh",
      "op://abc_123/x.y/z-w"
    ]) expect(referenceProblem(ok), ok).toBeUndefined()
  })

  it("refuses everything else", () => {
    for (const bad of [
      "Vault/item/field",
      "op://vault/item",
      "op://a/b/c/d/e",
      "op://vault//field",
      "op://vault/ /field",
      "op://vault/item/field?attribute=type",
      "op://vault/item/field?attribute=otp&x=y",
      "op://vault/it%em/field",
      "op://vault/item/fie\"ld",
      "op://vault/item/field\n"
    ]) expect(isValidReference(bad), bad).toBe(false)
  })
})
