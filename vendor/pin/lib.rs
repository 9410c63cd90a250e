// Empty: this package only exists so that cargo fetches the llama.cpp pin.
