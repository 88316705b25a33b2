/**
 * The one place where failures become exit codes (sysexits.h, DESIGN.md section 4) and one-line
 * messages. Messages name paths, line numbers and references; never a value or the token.
 */
import { sysconfdir } from "./buildInfo.ts"
import type { MapfileCheckFailed } from "./programs/check.ts"
import type { DoctorFailed } from "./programs/doctor.ts"
import type { InstallFailed, InstallNeedsExecutable, InstallNeedsRoot } from "./programs/install.ts"
import type { CallerNotInMapfile, MapfileError } from "./programs/plan.ts"
import type { DropFailed, ElevatedReadError, UnknownCaller, UnsafeEnvironment } from "./services/Privileges.ts"
import type { SecretProviderError } from "./services/SecretProvider.ts"
import type { OutputError } from "./services/SecretWriter.ts"
import type { LockTimeout, LockUnavailable } from "./services/UserLock.ts"
import * as Duration from "effect/Duration"

export const EX = {
  OK: 0,
  USAGE: 64,
  DATAERR: 65,
  NOINPUT: 66,
  UNAVAILABLE: 69,
  SOFTWARE: 70,
  CANTCREAT: 73,
  TEMPFAIL: 75,
  NOPERM: 77,
  CONFIG: 78
} as const

export type Failure =
  | ElevatedReadError
  | DropFailed
  | UnknownCaller
  | UnsafeEnvironment
  | MapfileError
  | CallerNotInMapfile
  | SecretProviderError
  | OutputError
  | LockTimeout
  | LockUnavailable
  | MapfileCheckFailed
  | DoctorFailed
  | InstallNeedsRoot
  | InstallNeedsExecutable
  | InstallFailed

/** Every failure tag, once; `satisfies` makes the compiler reject a missing or unknown one. */
const FAILURE_TAGS = {
  ProtectedFileMissing: true,
  UnsafeProtectedFile: true,
  UnrecognisedCredential: true,
  RootRuleViolated: true,
  OverrideRefused: true,
  UnsafeEnvironment: true,
  DropFailed: true,
  UnknownCaller: true,
  MapfileError: true,
  CallerNotInMapfile: true,
  ReferencesUnresolved: true,
  BackendUnavailable: true,
  RateLimited: true,
  InvalidToken: true,
  InvalidVaultFile: true,
  OutputError: true,
  LockTimeout: true,
  LockUnavailable: true,
  MapfileCheckFailed: true,
  DoctorFailed: true,
  InstallNeedsRoot: true,
  InstallNeedsExecutable: true,
  InstallFailed: true
} satisfies Record<Failure["_tag"], true>

export const isFailure = (error: unknown): error is Failure =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" && Object.hasOwn(FAILURE_TAGS, error._tag)

export interface Described {
  readonly code: number
  readonly message: string
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ").trim()

const listed = <A>(items: ReadonlyArray<A>, show: (a: A) => string, max = 5) =>
  items.slice(0, max).map(show).join(", ") + (items.length > max ? `, and ${items.length - max} more` : "")

const describe = (failure: Failure): Described => {
  switch (failure._tag) {
    case "ProtectedFileMissing":
      return { code: EX.NOINPUT, message: `${failure.what} ${failure.path} ${failure.reason}` }
    case "UnsafeProtectedFile":
      return { code: EX.CONFIG, message: `refusing ${failure.what} ${failure.path}: it ${failure.reason}` }
    case "UnrecognisedCredential":
      return { code: EX.CONFIG, message: `credential file ${failure.path} ${failure.reason}` }
    case "RootRuleViolated":
      return { code: EX.NOPERM, message: `refusing to run for root: mapfile ${failure.path} ${failure.reason}` }
    case "OverrideRefused":
      return {
        code: EX.NOPERM,
        message: `${failure.source} is refused when running set-user-ID (it would let any user supply their own files); only ${sysconfdir} is read`
      }
    case "UnsafeEnvironment":
      return { code: EX.NOPERM, message: `refusing to run set-user-ID with ${failure.variable} in the environment; unset it` }
    case "DropFailed":
      return { code: EX.NOPERM, message: `could not drop privileges safely: ${failure.reason}` }
    case "UnknownCaller":
      return { code: EX.NOPERM, message: `uid ${failure.uid} has no user name; the mapfile is keyed by user names` }
    case "MapfileError": {
      const [first, ...rest] = failure.problems
      const more = rest.length > 0 ? ` (and ${rest.length} more: lines ${listed(rest, (p) => String(p.line))})` : ""
      return { code: EX.DATAERR, message: `mapfile ${failure.path} line ${first?.line ?? 0}: ${first?.reason ?? "invalid"}${more}; nothing was written` }
    }
    case "CallerNotInMapfile":
      return { code: EX.NOPERM, message: `user ${failure.user} has no entries in mapfile ${failure.path}` }
    case "ReferencesUnresolved":
      return {
        code: EX.UNAVAILABLE,
        message: `${failure.failures.length} secret reference(s) did not resolve: ${listed(failure.failures, (f) => `${f.reference} (${f.reason})`)}; nothing was written`
      }
    case "BackendUnavailable":
      return { code: EX.UNAVAILABLE, message: `1Password is unavailable: ${failure.reason}; nothing was written` }
    case "RateLimited":
      return { code: EX.TEMPFAIL, message: `1Password rate limit reached, try again later: ${failure.reason}` }
    case "InvalidToken":
      return { code: EX.CONFIG, message: `the service account token in ${failure.path} was rejected: ${failure.reason}` }
    case "InvalidVaultFile":
      return { code: EX.CONFIG, message: `vault file ${failure.path} ${failure.reason}` }
    case "OutputError": {
      // The usual cause under /run/user: the user has no session, so systemd never made the directory.
      const hint = /^\/run\/user(\/\d+)?$/.test(failure.path) && failure.reason.startsWith("cannot create directory")
        ? "; the user has no /run/user directory (run: loginctl enable-linger <user>)"
        : ""
      return { code: EX.CANTCREAT, message: `${failure.path}: ${failure.reason}${hint}; every target was left as it was` }
    }
    case "LockTimeout":
      return { code: EX.TEMPFAIL, message: `gave up waiting for ${failure.path} after ${Duration.format(failure.waited)}; another run holds it` }
    case "LockUnavailable":
      return { code: EX.CANTCREAT, message: `lock ${failure.path}: ${failure.reason}` }
    case "MapfileCheckFailed":
      return { code: EX.DATAERR, message: `mapfile ${failure.path} has ${failure.errors} error(s); see the lines above` }
    case "DoctorFailed":
      return { code: EX.CONFIG, message: `${failure.failed} check(s) failed; each line above says how to fix it` }
    case "InstallNeedsRoot":
      return { code: EX.NOPERM, message: "install must be run by root" }
    case "InstallNeedsExecutable":
      return { code: EX.USAGE, message: `install copies the single executable it runs from, not ${failure.running}; run dist/op-secret-manager install` }
    case "InstallFailed":
      return { code: EX.CANTCREAT, message: `install step failed: ${failure.step}: ${failure.reason}` }
  }
}

export const describeFailure = (failure: Failure): Described => {
  const described = describe(failure)
  return { code: described.code, message: oneLine(described.message) }
}
