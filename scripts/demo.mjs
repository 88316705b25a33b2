// The quick start's main job on the bundled demo vault: fetch the current user's demo secrets,
// fetch again (nothing changes), show the --json report, then clean up. No 1Password account needed.
import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir, userInfo } from "node:os"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const bin = join(root, "dist/op-secret-manager.js")
const work = mkdtempSync(join(tmpdir(), "op-secret-manager-demo-"))
const user = userInfo().username

try {
  // The credential and vault files must be private (0600), as on a real installation.
  const vault = join(work, "vault.json")
  copyFileSync(join(root, "demo/vault.json"), vault)
  chmodSync(vault, 0o600)
  const api = join(work, "api")
  writeFileSync(api, `file:${vault}\n`, { mode: 0o600 })
  const mapfile = join(work, "mapfile")
  writeFileSync(mapfile, readFileSync(join(root, "demo/mapfile.template"), "utf8").replaceAll("@USER@", user), { mode: 0o644 })
  const secrets = join(work, "secrets")
  const common = ["--map-file-path", mapfile, "--api-key-path", api, "--secrets-dir", secrets]

  const run = (title, args) => {
    console.log(`\n$ op-secret-manager ${args.join(" ")}    # ${title}`)
    const result = spawnSync(process.execPath, [bin, ...args, ...common], { stdio: "inherit" })
    if (result.status !== 0) throw new Error(`op-secret-manager exited with ${result.status}`)
  }
  const list = () => {
    const walk = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)])
    for (const file of walk(secrets)) {
      const stat = statSync(file)
      console.log(`  ${(stat.mode & 0o777).toString(8)}  ${String(stat.size).padStart(4)} bytes  ${relative(work, file)}`)
    }
  }

  console.log(`demo for user ${user} in ${work} (mapfile ${mapfile})`)
  run("fetch every entry of this user", ["-v"])
  console.log("\nfiles written (values are never printed):")
  list()
  run("again: nothing changes", [])
  run("only the 'web' tag, as JSON", ["--tags", "web", "--json"])
  run("remove the secrets again", ["--cleanup"])
  execFileSync("find", [secrets, "-type", "f"], { stdio: "inherit" })
  console.log("\ndemo done: every secret file was removed")
} finally {
  rmSync(work, { recursive: true, force: true })
}
