"""The report page's stylesheet (also used by the comparison page): readable at 390 px and on a desktop."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}.summary{background:#f6f8fa;border-left:4px solid #4c78a8;padding:.5em 1.2em}
.flag{color:#b00}img{max-width:100%}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}
small{color:#666}
.banner{border:2px solid #b00;padding:.6em .8em;background:#fee;margin:1em 0}
.warn{border-left:4px solid #c60;background:#fff6e5;padding:.4em .8em}
.headline{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.headline div{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;min-width:10em}
.headline div>span{display:block;font-size:.85em;color:#555}.headline b{display:block;font-size:1.6em}
.headline small{display:block}
code.fp{font-size:.95em;word-break:break-all}.nw,.banner code{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}.scroll table{margin:0}code{overflow-wrap:anywhere}
.unverified{font-size:1.05em}.unverified ul{margin:.3em 0}
@media (max-width:600px){body{margin:.8em auto;padding:0 .6em}h1{font-size:1.3em}h2{font-size:1.2em}
.headline div{flex:1 1 40%;min-width:0}.headline b{font-size:1.3em}table{font-size:.85em}
.scroll table{width:max-content}th,td{max-width:15em}}
"""
