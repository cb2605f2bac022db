def setup(app):
    app.add_config_value("doc_pictures_dir", "", "env")
    app.add_config_value("doc_pictures_quick", False, "env")
    return {"version": "1", "parallel_read_safe": True}
