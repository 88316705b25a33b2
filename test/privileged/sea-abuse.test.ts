import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Installation, isRoot } from "./installation.ts"

describe.skipIf(!isRoot)("probe", () => {
  const inst = new Installation()
  beforeAll(async () => {
    const t = Date.now()
    await inst.create(["alice", "bob"])
    console.log("create ms", Date.now() - t)
  }, 180_000)
  afterAll(() => inst.remove())
  it("times", () => {
    const alice = inst.user("alice")
    const vault: Record<string, string> = {}
    const lines: Array<string> = []
    for (let i = 0; i < 300; i++) {
      vault[`op://Vault/k${i}/password`] = "v1-" + i
      lines.push(`${alice.name} op://Vault/k${i}/password b${i % 3}/s${i}`)
    }
    inst.writeVault(vault)
    inst.writeMapfile(lines.join("\n") + "\n")
    const d = join(inst.home(alice), "d")
    for (let k = 0; k < 3; k++) {
      for (const key of Object.keys(vault)) vault[key] = `v${k}-` + key
      inst.writeVault(vault)
      const t = Date.now()
      const r = inst.run(alice, ["--secrets-dir", d])
      console.log("run", r.status, Date.now() - t, r.stderr)
    }
    let t = Date.now()
    let r = inst.run(alice, ["--secrets-dir", d])
    console.log("unchanged run", r.status, Date.now() - t)
    t = Date.now()
    r = inst.run(alice, ["--version"])
    console.log("version", r.status, Date.now() - t, r.stdout)
    r = inst.runCommandAs(alice, "/usr/bin/python3", ["-c", `import ctypes; libc=ctypes.CDLL(None); argv=(ctypes.c_char_p*1)(None); envp=(ctypes.c_char_p*2)(b"PATH=/usr/bin:/bin", None); libc.execve(${JSON.stringify(inst.bin)}.encode(), argv, envp); print("execve failed", ctypes.get_errno())`])
    console.log("argc0", r)
    r = inst.runCommandAs(alice, "/bin/bash", ["-c", `exec <&- >&- 2>&-; exec ${inst.bin} --secrets-dir ${d}`])
    console.log("closed", r)
    r = inst.runCommandAs(alice, "/usr/bin/setpriv", ["--no-new-privs", "--", inst.bin, "--secrets-dir", d])
    console.log("nnp", r)
    r = inst.runCommandAs(alice, "/usr/bin/prlimit", ["--fsize=65536:65536", "--", inst.bin, "--secrets-dir", d])
    console.log("fsize64k", r)
    expect(1).toBe(1)
  }, 120_000)
})
