"""Small HTML builders for the report: one inline stylesheet, no JavaScript, no external resources."""
import html
import math

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5em 3em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.6em; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; }
nav { background: #f4f6f8; padding: 0.2em 1em; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
td.l, th.l { white-space: normal; }
th { background: #f0f2f4; } td.l, th.l { text-align: left; }
tr.pass td.ok { background: #d8f0d8; } tr.fail td.ok { background: #f6d0d0; font-weight: bold; }
tr.null td.ok { background: #eee; color: #666; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.88em; color: #444; max-width: 60em; }
img { max-width: 100%; height: auto; }
.stamps { display: flex; flex-wrap: wrap; gap: 0.5em; }
.stamps figure { margin: 0; text-align: center; }
.stamps img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #999; }
.stamps figcaption { font-size: 0.75em; }
.mosaic { display: flex; flex-wrap: wrap; gap: 1em; }
.mosaic figure { width: 31%; min-width: 220px; }
.mosaic figure.wide { width: 64%; }
.mosaic img { border: 1px solid #999; }
.note { color: #7a4b00; background: #fff6e0; padding: 0.4em 0.8em; border-left: 4px solid #e0a000; }
.muted { color: #666; font-size: 0.88em; }
"""


def esc(x):
    return html.escape(str(x), quote=True)


def num(x, fmt="{:.3g}"):
    """A number as text; None/NaN as an en dash."""
    if x is None:
        return "&ndash;"
    if isinstance(x, (bool,)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    try:
        if math.isnan(x):
            return "&ndash;"
    except TypeError:
        return esc(x)
    return fmt.format(x)


def page(title, body, nav=(), css_extra=""):
    """A whole document. `nav`: (href, label) pairs listed at the top."""
    links = "".join(f'<li><a href="{esc(h)}">{esc(t)}</a></li>' for h, t in nav)
    navhtml = f"<nav><ul>{links}</ul></nav>" if links else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}{css_extra}</style></head>\n"
            f"<body><h1>{esc(title)}</h1>{navhtml}\n{body}\n</body></html>\n")


def table(headers, rows, *, row_classes=None, left=(0,), table_id=None):
    """An HTML table. Cells are inserted as given (escape text with esc); `left`: left-aligned columns."""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f'<th class="l">{h}</th>' if i in left else f"<th>{h}</th>" for i, h in enumerate(headers or ()))
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes else ""
        cells = "".join(f'<td class="l">{c}</td>' if i in left else f"<td>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    return f"<table{tid}>{thead}<tbody>{''.join(body)}</tbody></table>"


def figure(src, caption, alt=None, width=None, cls=None):
    w = f' width="{int(width)}"' if width else ""
    c = f' class="{esc(cls)}"' if cls else ""
    return (f'<figure{c}><img src="{esc(src)}" alt="{esc(alt or caption[:80])}"{w}>'
            f"<figcaption>{caption}</figcaption></figure>")


def note(text):
    return f'<p class="note">{text}</p>'


def section(sid, title, body):
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>\n{body}\n</section>'
