import { defineConfig } from "vite";

// The built console lands in the Python package, which serves it as static files.
export default defineConfig({
  base: "/",
  build: {
    outDir: "../src/sandboxd/console/static",
    emptyOutDir: true,
    sourcemap: false,
    assetsInlineLimit: 0,
  },
});
