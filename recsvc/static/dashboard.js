// recsvc dashboard: a tooltip for the charts' bars and points (the only thing that needs a
// script; without it each shows its value in the browser's own tooltip, an SVG <title>).
(function () {
  "use strict";
  var tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  tip.setAttribute("role", "status");
  document.addEventListener("DOMContentLoaded", function () {
    document.body.appendChild(tip);
    var marks = document.querySelectorAll("svg [data-tip]");
    for (var i = 0; i < marks.length; i++) {
      var title = marks[i].querySelector("title");
      if (title) {
        marks[i].removeChild(title);  // one tooltip, not the browser's as well
      }
      marks[i].setAttribute("tabindex", "0");
      marks[i].setAttribute("aria-label", marks[i].getAttribute("data-tip"));
    }
  });
  function show(mark, x, y) {
    tip.textContent = mark.getAttribute("data-tip");
    tip.hidden = false;
    var width = tip.offsetWidth;
    tip.style.left = Math.min(x + 12, window.innerWidth - width - 8) + "px";
    tip.style.top = (y + 14) + "px";
  }
  document.addEventListener("mousemove", function (event) {
    var mark = event.target.closest && event.target.closest("svg [data-tip]");
    if (mark) {
      show(mark, event.clientX, event.clientY);
    } else {
      tip.hidden = true;
    }
  });
  document.addEventListener("focusin", function (event) {
    var mark = event.target.closest && event.target.closest("svg [data-tip]");
    if (mark) {
      var box = mark.getBoundingClientRect();
      show(mark, box.left + box.width / 2, box.bottom);
    } else {
      tip.hidden = true;
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      tip.hidden = true;
    }
  });
})();
