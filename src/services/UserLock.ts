/**
 * UserLock: `--serialize`, one run at a time per user. An flock(2) on `op-secret-manager.lock`
 * beside the secrets directory, taken after the drop (so the lock file is the caller's own) and
 * released when the scope closes. Waiting polls a non-blocking flock, so SIGINT/SIGTERM interrupt
 * the wait like any other effect.
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import { EINTR, errnoCode, EWOULDBLOCK, LOCK_EX, LOCK_NB, libc } from "../native/libc.ts"
import { type UnprivilegedCaller, Unprivileged } from "./Privileges.ts"

/** Another run held the lock for the whole wait (exit 75). */
export class LockTimeout extends Data.TaggedError("LockTimeout")<{
  readonly path: string
  readonly waited: Duration.Duration
}> {}

/** The lock file cannot be opened or locked (exit 73). */
export class LockUnavailable extends Data.TaggedError("LockUnavailable")<{
  readonly path: string
  readonly reason: string
}> {}

export class UserLock extends Context.Tag("op-secret-manager/UserLock")<UserLock, {
  readonly acquire: (path: string, timeout: Duration.Duration) => Effect.Effect<void, LockTimeout | LockUnavailable, Scope.Scope>
}>() {}

const POLL = Duration.millis(100)
const REPORT_EVERY = Duration.seconds(5)

const openLockFile = (path: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600),
      catch: (error) => new LockUnavailable({ path, reason: `cannot open the lock file (${errnoCode(error)})` })
    }),
    // Closing the descriptor releases the flock.
    (fd) => Effect.sync(() => fs.closeSync(fd))
  )

const acquire = (path: string, timeout: Duration.Duration) =>
  Effect.gen(function*() {
    const fd = yield* openLockFile(path)
    const started = Date.now()
    let lastReport = started
    for (;;) {
      const errno = libc().flock(fd, LOCK_EX | LOCK_NB)
      if (errno === 0) return
      if (errno !== EWOULDBLOCK && errno !== EINTR) {
        return yield* Effect.fail(new LockUnavailable({ path, reason: `flock failed with errno ${errno}` }))
      }
      const now = Date.now()
      if (now - started >= Duration.toMillis(timeout)) {
        return yield* Effect.fail(new LockTimeout({ path, waited: timeout }))
      }
      if (now - lastReport >= Duration.toMillis(REPORT_EVERY)) {
        lastReport = now
        yield* Effect.logInfo(`waiting for ${path}: another op-secret-manager run of this user holds it (${Math.round((now - started) / 1000)} s)`)
      }
      yield* Effect.sleep(POLL)
    }
  })

/** Requires the drop: the lock file is created and held as the caller. */
export const UserLockLive: Layer.Layer<UserLock, never, UnprivilegedCaller> = Layer.effect(
  UserLock,
  Effect.as(Unprivileged, UserLock.of({ acquire }))
)

/** Records the lock paths it was asked for and never waits. */
export const UserLockTest = (acquired: Array<string> = []): Layer.Layer<UserLock> =>
  Layer.succeed(UserLock, UserLock.of({ acquire: (path) => Effect.sync(() => void acquired.push(path)) }))
