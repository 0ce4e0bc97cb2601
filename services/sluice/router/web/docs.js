// Starts Swagger UI on the edge's OpenAPI document (docs.html). A separate file, not an
// inline script, so the page keeps the web page's content security policy (web_page.py).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  onComplete: () => document.body.setAttribute("data-ready", "1"),
});
