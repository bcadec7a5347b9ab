// ESLint for the JavaScript of the pages sitewatch serves (imagery/*/static/*.js).
// The scripts are plain browser scripts (an IIFE each, inlined under a CSP nonce), not modules;
// L is the vendored Leaflet (imagery/webmap/static/leaflet), loaded before them.
const js = require("@eslint/js");
const globals = require("globals");

module.exports = [
  // the vendored Leaflet (minified, as published on the npm registry): not ours to lint
  { ignores: ["imagery/**/static/leaflet/**"] },
  js.configs.recommended,
  {
    files: ["imagery/**/static/*.js"],
    languageOptions: {
      ecmaVersion: 2020,
      sourceType: "script",
      globals: { ...globals.browser, L: "readonly" },
    },
    rules: {
      "no-unused-vars": ["error", { args: "none" }],
      eqeqeq: ["error", "always", { null: "ignore" }],
      "no-implicit-globals": "error",
      strict: ["error", "function"],
    },
  },
];
