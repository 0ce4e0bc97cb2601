// Parses an API Blueprint file with drafter.js and prints a JSON summary: the warnings and
// errors of the parse result (annotations) and the resources and actions it found.
// Run by tests/docs/test_apib.py: node apib_parse.cjs FILE
const fs = require("fs");
const drafter = require("drafter.js");

const result = drafter.parseSync(fs.readFileSync(process.argv[2], "utf8"), {});
const annotations = [];
const resources = [];
const walk = (element) => {
  if (!element || typeof element !== "object") return;
  if (element.element === "annotation") {
    annotations.push({ kind: element.meta?.classes?.content?.[0]?.content, text: element.content });
  }
  if (element.element === "resource") {
    const actions = (element.content || []).filter((e) => e.element === "transition");
    resources.push({
      href: element.attributes?.href?.content,
      actions: actions.map((a) => a.content.filter((t) => t.element === "httpTransaction").length),
    });
  }
  for (const child of Array.isArray(element.content) ? element.content : []) walk(child);
};
walk(result);
console.log(JSON.stringify({ annotations, resources }));
