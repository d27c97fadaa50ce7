/* recsvc content blocks for any page.
 *
 *   <div data-recsvc-slot="home_hero" data-recsvc-customer="12346"></div>
 *   <script src="https://recs.example.com/v1/embed.js" data-recsvc-key="rk_..." async></script>
 *
 * Every element with data-recsvc-slot gets its block (data-recsvc-customer is optional:
 * without it, the anonymous block). When the service is slow or down the element keeps what
 * it had; nothing else on the page is touched. The key must be a publishable one
 * (scope blocks:read): anyone can read it in the page.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !window.fetch) { return; }
  var origin = new URL(script.src, document.baseURI).origin;
  var key = script.getAttribute("data-recsvc-key");
  var timeoutMs = parseInt(script.getAttribute("data-recsvc-timeout") || "3000", 10);

  function load(element) {
    var slot = element.getAttribute("data-recsvc-slot");
    var customer = element.getAttribute("data-recsvc-customer");
    if (!slot || element.getAttribute("data-recsvc-loaded")) { return; }
    var path = customer
      ? "/v1/customers/" + encodeURIComponent(customer) + "/blocks/" + encodeURIComponent(slot)
      : "/v1/blocks/" + encodeURIComponent(slot);
    var controller = window.AbortController ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, timeoutMs) : null;
    var headers = key ? { "X-API-Key": key } : {};
    fetch(origin + path + "?format=html", {
      headers: headers, credentials: "omit", signal: controller ? controller.signal : undefined
    }).then(function (response) {
      if (!response.ok) { throw new Error("recsvc " + response.status); }
      return response.text();
    }).then(function (html) {
      element.innerHTML = html;  /* rendered and escaped by the service */
      element.setAttribute("data-recsvc-loaded", "true");
    }).catch(function () {
      element.setAttribute("data-recsvc-loaded", "failed");
    }).then(function () {
      if (timer) { clearTimeout(timer); }
    });
  }

  function run() {
    var elements = document.querySelectorAll("[data-recsvc-slot]");
    for (var i = 0; i < elements.length; i++) { load(elements[i]); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
